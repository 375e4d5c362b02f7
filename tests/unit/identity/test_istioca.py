"""Istio's CA messages (ca.proto) and gRPC message framing, byte by byte."""

from __future__ import annotations

import pytest

from shoal.core.identity import istioca


def test_request_wire_format_matches_the_proto_field_numbers():
    req = istioca.IstioCertificateRequest(csr="C", validity_duration=5)
    # field 1 (csr, length-delimited) = 0x0a; field 3 (varint) = 0x18.
    assert req.SerializeToString() == b"\x0a\x01C\x18\x05"
    req.metadata.fields[istioca.IMPERSONATED_IDENTITY].string_value = "id"
    again = istioca.IstioCertificateRequest.FromString(req.SerializeToString())
    assert istioca.impersonated_identity(again) == "id"
    assert istioca.impersonated_identity(istioca.IstioCertificateRequest()) == ""


def test_response_is_repeated_field_1():
    resp = istioca.IstioCertificateResponse(cert_chain=["a", "b"])
    assert resp.SerializeToString() == b"\x0a\x01a\x0a\x01b"


def test_frame_and_unframe():
    assert istioca.frame(b"xyz") == b"\x00\x00\x00\x00\x03xyz"
    assert istioca.unframe(b"\x00\x00\x00\x00\x03xyz") == b"xyz"
    assert istioca.unframe(istioca.frame(b"")) == b""


@pytest.mark.parametrize("data,why", [
    (b"\x00\x00\x00", "truncated"),
    (b"\x01\x00\x00\x00\x01x", "compressed"),
    (b"\x00\x00\x00\x00\x03xy", "exactly one"),
    (b"\x00\x00\x00\x00\x01xy", "exactly one"),
    (b"\x00\xff\xff\xff\xff", "exceeds"),
])
def test_unframe_refuses(data, why):
    with pytest.raises(istioca.FramingError, match=why):
        istioca.unframe(data)


def test_unframe_byte_by_byte_prefixes_are_all_refused():
    framed = istioca.frame(b"hello")
    for i in range(len(framed)):
        with pytest.raises(istioca.FramingError):
            istioca.unframe(framed[:i])
    assert istioca.unframe(framed) == b"hello"
