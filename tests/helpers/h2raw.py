"""Raw HTTP/2 frames written by the test itself (hyperframe + hpack), not by
shoal's client: attack traffic that no well-behaved implementation sends."""

from __future__ import annotations

import hpack
import hyperframe.frame as hf

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class RawFrames:
    """Frame bytes of one client connection (keeps the HPACK encoder state)."""

    def __init__(self) -> None:
        self.enc = hpack.Encoder()
        self.next_id = 1

    def preface(self, **settings) -> bytes:
        f = hf.SettingsFrame(0, settings=settings)
        return PREFACE + f.serialize()

    def connect_block(self, authority: str = "127.0.0.1:9", extra=()) -> bytes:
        return self.enc.encode([(":method", "CONNECT"), (":authority", authority), *extra])

    def headers(self, sid: int | None = None, block: bytes | None = None, *,
                end_headers: bool = True, end_stream: bool = False,
                authority: str = "127.0.0.1:9") -> bytes:
        if sid is None:
            sid = self.new_id()
        f = hf.HeadersFrame(sid, data=block if block is not None else self.connect_block(authority))
        if end_headers:
            f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    def new_id(self) -> int:
        sid, self.next_id = self.next_id, self.next_id + 2
        return sid

    @staticmethod
    def continuation(sid: int, data: bytes, *, end_headers: bool = False) -> bytes:
        f = hf.ContinuationFrame(sid, data=data)
        if end_headers:
            f.flags.add("END_HEADERS")
        return f.serialize()

    @staticmethod
    def rst(sid: int, code: int = 8) -> bytes:
        return hf.RstStreamFrame(sid, error_code=code).serialize()

    @staticmethod
    def ping(payload: bytes = b"12345678") -> bytes:
        return hf.PingFrame(0, opaque_data=payload).serialize()

    @staticmethod
    def settings(**values) -> bytes:
        return hf.SettingsFrame(0, settings=values).serialize()

    @staticmethod
    def window_update(sid: int = 0, inc: int = 1) -> bytes:
        return hf.WindowUpdateFrame(sid, window_increment=inc).serialize()

    @staticmethod
    def data(sid: int, data: bytes = b"", *, end_stream: bool = False) -> bytes:
        f = hf.DataFrame(sid, data=data)
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    @staticmethod
    def raw_header(length: int, ftype: int, flags: int, sid: int) -> bytes:
        """A frame header alone (its body may never come)."""
        return length.to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big")


def parse_frames(data: bytes) -> list:
    """Frames in `data` (whole ones; the rest is ignored)."""
    out, view = [], memoryview(data)
    while len(view) >= 9:
        frame, length = hf.Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9:9 + length])
        out.append(frame)
        view = view[9 + length:]
    return out


def goaway_code(data: bytes) -> int | None:
    """The error code of the first GOAWAY in `data`, or None."""
    for f in parse_frames(data):
        if isinstance(f, hf.GoAwayFrame):
            return f.error_code
    return None
