"""Istio's CA protocol: `istio.v1.auth.IstioCertificateService/CreateCertificate`.

The messages of istio/api `security/v1alpha1/ca.proto`, built at import time
with protobuf's descriptor API (no generated code to keep in step):

    message IstioCertificateRequest {
      string csr = 1;                      // PEM CSR
      string subject_id = 2;               // optional, unused by Istio's CAs
      int64 validity_duration = 3;         // seconds, optional
      google.protobuf.Struct metadata = 4; // e.g. {"ImpersonatedIdentity": spiffe id}
    }
    message IstioCertificateResponse {
      repeated string cert_chain = 1;      // PEM each: leaf first, root last
    }

plus gRPC's length-prefixed message framing (sans-IO) and the status codes
both ends use. Transport lives in controlplane/server.py (server) and
core/identity/grpcca.py (client).
"""

from __future__ import annotations

import struct

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

PACKAGE = "istio.v1.auth"
SERVICE = f"{PACKAGE}.IstioCertificateService"
METHOD_PATH = f"/{SERVICE}/CreateCertificate"
# ztunnel's metadata key when it asks on behalf of a pod (impersonation).
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
GRPC_CONTENT_TYPE = "application/grpc"

# gRPC status codes (grpc/doc/statuscodes.md).
OK = 0
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# A request is a CSR (< 2 KiB) and a little metadata; refuse anything near this.
MAX_MESSAGE_BYTES = 64 * 1024
_PREFIX = struct.Struct(">BI")     # compressed flag, length


def _build_messages():
    f = descriptor_pb2.FileDescriptorProto(name="security/v1alpha1/ca.proto", package=PACKAGE,
                                           syntax="proto3",
                                           dependency=["google/protobuf/struct.proto"])
    req = f.message_type.add(name="IstioCertificateRequest")
    T = descriptor_pb2.FieldDescriptorProto
    for name, number, kind, type_name in (("csr", 1, T.TYPE_STRING, None),
                                          ("subject_id", 2, T.TYPE_STRING, None),
                                          ("validity_duration", 3, T.TYPE_INT64, None),
                                          ("metadata", 4, T.TYPE_MESSAGE, ".google.protobuf.Struct")):
        field = req.field.add(name=name, number=number, type=kind, label=T.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name
    resp = f.message_type.add(name="IstioCertificateResponse")
    resp.field.add(name="cert_chain", number=1, type=T.TYPE_STRING, label=T.LABEL_REPEATED)
    svc = f.service.add(name="IstioCertificateService")
    svc.method.add(name="CreateCertificate", input_type=f".{PACKAGE}.IstioCertificateRequest",
                   output_type=f".{PACKAGE}.IstioCertificateResponse")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(f)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateRequest")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateResponse")))


IstioCertificateRequest, IstioCertificateResponse = _build_messages()


class FramingError(Exception):
    """A gRPC message frame that is malformed, compressed or too large."""


def frame(message: bytes) -> bytes:
    """One uncompressed gRPC message: flag 0, 4-byte big-endian length, bytes."""
    return _PREFIX.pack(0, len(message)) + message


def unframe(data: bytes) -> bytes:
    """The single message of a unary call's body.

    Raises:
        FramingError: truncated, compressed (we advertise no encodings),
            trailing bytes, or larger than MAX_MESSAGE_BYTES.
    """
    if len(data) < _PREFIX.size:
        raise FramingError("truncated gRPC message prefix")
    compressed, length = _PREFIX.unpack_from(data)
    if compressed:
        raise FramingError("compressed gRPC messages are not accepted")
    if length > MAX_MESSAGE_BYTES:
        raise FramingError(f"gRPC message of {length} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(data) != _PREFIX.size + length:
        raise FramingError("gRPC body is not exactly one message")
    return bytes(data[_PREFIX.size:])


def impersonated_identity(request) -> str:
    """The `ImpersonatedIdentity` metadata value, "" when absent."""
    if not request.HasField("metadata"):
        return ""
    value = request.metadata.fields.get(IMPERSONATED_IDENTITY)
    return value.string_value if value is not None else ""
