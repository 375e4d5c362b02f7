"""The private APIs of h2, hyperframe and prometheus_client that shoal uses.

pyproject.toml caps these libraries to the tested range. When that range is
widened, this file says which private name a new release dropped or changed,
instead of HBONE or the metrics misbehaving quietly:

- core/hbone/h2fast.py and core/hbone/h2limits.py subclass h2's connection
  and frame buffer (zero-copy DATA, abuse limits, graceful GOAWAY);
- core/metrics.py switches prometheus_client to multiprocess mode after
  import and reads metric label names.
"""

from __future__ import annotations

import inspect

import h2.connection
import h2.errors
import h2.frame_buffer
import h2.stream
import hyperframe.frame
import prometheus_client
from prometheus_client import multiprocess, values

import pytest

from shoal.core.hbone import h2fast  # noqa: F401  (installs the DataFrame repr)


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


# (the private API, what uses it, check) -- each check returns True when the
# API is as shoal expects it.
H2_API = [
    ("h2.connection.H2Connection._prepare_for_sending(self, frames)", "h2fast, h2limits",
     lambda: _params(h2.connection.H2Connection._prepare_for_sending) == ["self", "frames"]),
    ("h2.connection.H2Connection._receive_frame(self, frame)", "h2limits",
     lambda: _params(h2.connection.H2Connection._receive_frame) == ["self", "frame"]),
    ("h2.connection.H2Connection._receive_goaway_frame(self, frame)", "h2fast",
     lambda: _params(h2.connection.H2Connection._receive_goaway_frame) == ["self", "frame"]),
    ("h2.connection.H2Connection._receive_headers_frame(self, frame)", "h2limits",
     lambda: _params(h2.connection.H2Connection._receive_headers_frame) == ["self", "frame"]),
    ("h2.connection._decode_headers(decoder, encoded_header_block)", "h2limits",
     lambda: _params(h2.connection._decode_headers) == ["decoder", "encoded_header_block"]),
    ("h2.errors._error_code_from_int(0) -> ErrorCodes.NO_ERROR", "h2fast",
     lambda: h2.errors._error_code_from_int(0) is h2.errors.ErrorCodes.NO_ERROR),
    ("h2.frame_buffer.FrameBuffer(server=...)", "h2fast, h2limits",
     lambda: "server" in _params(h2.frame_buffer.FrameBuffer.__init__)),
    ("h2.frame_buffer.FrameBuffer._validate_frame_length(self, length)", "h2fast",
     lambda: _params(h2.frame_buffer.FrameBuffer._validate_frame_length) == ["self", "length"]),
    ("h2.frame_buffer.FrameBuffer._update_header_buffer(self, f)", "h2fast",
     lambda: _params(h2.frame_buffer.FrameBuffer._update_header_buffer) == ["self", "f"]),
    ("h2.stream.StreamClosedBy.SEND_RST_STREAM", "h2limits",
     lambda: hasattr(h2.stream.StreamClosedBy, "SEND_RST_STREAM")),
    ("hyperframe.frame.Frame.parse_frame_header(header) -> (frame, length)", "h2fast",
     lambda: hyperframe.frame.Frame.parse_frame_header(
         memoryview(b"\x00\x00\x05\x00\x00\x00\x00\x00\x01"))[1] == 5),
    ("hyperframe.frame.Frame.__repr__ calls _body_repr", "h2fast",
     lambda: "<10 bytes>" in repr(hyperframe.frame.DataFrame(1, b"x" * 10))),
]


def _connection_state() -> list[tuple[str, bool]]:
    """Instance attributes of a live connection and its frame buffer."""
    conn = h2.connection.H2Connection(h2.connection.H2Configuration(client_side=False))
    buf = conn.incoming_buffer
    return [
        ("H2Connection._data_to_send is a bytearray", isinstance(conn._data_to_send, bytearray)),
        ("H2Connection._closed_streams is a dict", isinstance(conn._closed_streams, dict)),
        ("H2Connection.incoming_buffer is a FrameBuffer",
         isinstance(buf, h2.frame_buffer.FrameBuffer)),
        ("H2Connection.highest_inbound_stream_id / open_inbound_streams",
         conn.highest_inbound_stream_id == 0 and conn.open_inbound_streams == 0),
        ("H2Connection.outbound_flow_control_window / max_outbound_frame_size",
         isinstance(conn.outbound_flow_control_window, int)
         and isinstance(conn.max_outbound_frame_size, int)),
        ("FrameBuffer._data is a bytearray", isinstance(buf._data, bytearray)),
        ("FrameBuffer._headers_buffer is a list", isinstance(buf._headers_buffer, list)),
    ]


@pytest.mark.parametrize("api,user,check", H2_API, ids=[a for a, _, _ in H2_API])
def test_h2_private_api(api, user, check):
    try:
        ok = check()
    except (AttributeError, TypeError, ValueError) as e:
        ok, why = False, f"{type(e).__name__}: {e}"
    else:
        why = "changed"
    assert ok, (f"h2 {h2.__version__} / hyperframe: {api} {why}; core/hbone/{user} relies on "
                f"it. Keep h2 in the range pyproject.toml caps it to, or port the subclass.")


def test_h2_connection_internals():
    broken = [name for name, ok in _connection_state() if not ok]
    assert not broken, (f"h2 {h2.__version__}: {broken} no longer hold; core/hbone/h2fast.py "
                        "and h2limits.py rely on them")


def test_prometheus_client_private_api():
    """core/metrics.py: values.ValueClass / get_value_class (multiprocess mode
    chosen after import), metric._labelnames / _name, mark_process_dead."""
    problems = []
    if not (hasattr(values, "ValueClass") and callable(getattr(values, "get_value_class", None))):
        problems.append("prometheus_client.values.ValueClass / get_value_class()")
    registry = prometheus_client.CollectorRegistry()
    counter = prometheus_client.Counter("shoal_probe", "probe", ["a", "b"], registry=registry)
    if getattr(counter, "_labelnames", None) != ("a", "b"):
        problems.append("Counter._labelnames")
    if getattr(counter, "_name", None) != "shoal_probe":
        problems.append("Counter._name")
    if _params(multiprocess.mark_process_dead)[:1] != ["pid"]:
        problems.append("multiprocess.mark_process_dead(pid, ...)")
    assert not problems, (f"prometheus_client: {problems} changed; core/metrics.py relies on "
                          "them. Keep it in the range pyproject.toml caps it to.")
