"""The waypoint's HTTP/2 front end under the HTTP/2 attacks (raw frames
written by the test over h2c prior knowledge on the test listener): the same
limits as HBONE (core.hbone.h2limits), and honest requests still served."""

from __future__ import annotations

import asyncio
import socket
import threading

import hyperframe.frame as hf
import pytest

from tests.helpers.h2raw import RawFrames, parse_frames
from tests.helpers.waypoint_mesh import echo_waypoint
from tests.integration.waypoint.conftest import Client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ENHANCE_YOUR_CALM, REFUSED_STREAM = 0xB, 0x7


class RawH2:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = RawFrames()
        self.got = bytearray()
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        self.sock.sendall(self.f.preface())

    def _read(self) -> None:
        try:
            while data := self.sock.recv(65536):
                self.got += data
        except OSError:
            pass
        self.closed.set()

    def get(self, sid: int) -> bytes:
        block = self.f.enc.encode([(":method", "GET"), (":path", "/x"), (":scheme", "http"),
                                   (":authority", "echo:8080")])
        return self.f.headers(sid, block, end_stream=True)

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def frames(self) -> list:
        return parse_frames(bytes(self.got))

    def goaway(self):
        return next((f.error_code for f in self.frames() if isinstance(f, hf.GoAwayFrame)), None)


def _honest(port: int) -> int:
    c = Client(port)
    status = c.json("/after")[0].status
    c.close()
    return status


@pytest.fixture
async def waypoint(backends):
    async with echo_waypoint(backends("v1")) as wp:
        yield wp


async def test_rapid_reset_closes_with_enhance_your_calm(waypoint):
    def go():
        a = RawH2(waypoint.plaintext_port)
        for _ in range(20):
            batch = b""
            for _ in range(500):
                sid = a.f.new_id()
                batch += a.get(sid) + a.f.rst(sid)
            if not a.send(batch):
                break
        a.closed.wait(10)
        return a.goaway()
    assert await asyncio.to_thread(go) == ENHANCE_YOUR_CALM
    assert await asyncio.to_thread(_honest, waypoint.plaintext_port) == 200


@pytest.mark.parametrize("kind", ["ping", "settings"])
async def test_control_floods_close_with_enhance_your_calm(waypoint, kind):
    def go():
        a = RawH2(waypoint.plaintext_port)
        one = a.f.ping() if kind == "ping" else a.f.settings()
        for _ in range(300):
            if not a.send(one * 100):
                break
        a.closed.wait(10)
        return a.goaway()
    assert await asyncio.to_thread(go) == ENHANCE_YOUR_CALM
    assert await asyncio.to_thread(_honest, waypoint.plaintext_port) == 200


async def test_continuation_flood_refused(waypoint):
    def go():
        a = RawH2(waypoint.plaintext_port)
        sid = a.f.new_id()
        a.send(a.f.headers(sid, a.f.connect_block(), end_headers=False))
        for _ in range(40):
            if not a.send(a.f.continuation(sid, b"\x00" * 16384)):
                break
        a.closed.wait(10)
        return a.goaway()
    assert await asyncio.to_thread(go) == ENHANCE_YOUR_CALM


async def test_streams_above_the_limit_refused_alone(waypoint):
    from shoal.waypoint.h2server import MAX_CONCURRENT_STREAMS

    def go():
        a = RawH2(waypoint.plaintext_port)
        # Requests without END_STREAM stay open (the body never comes).
        block = lambda: a.f.enc.encode([(":method", "POST"), (":path", "/x"),  # noqa: E731
                                        (":scheme", "http"), (":authority", "echo:8080")])
        ids = [a.f.new_id() for _ in range(MAX_CONCURRENT_STREAMS + 5)]
        a.send(b"".join(a.f.headers(sid, block()) for sid in ids))
        for _ in range(200):
            refused = [f.stream_id for f in a.frames()
                       if isinstance(f, hf.RstStreamFrame) and f.error_code == REFUSED_STREAM]
            if len(refused) >= 5:
                break
            a.closed.wait(0.05)
        return refused, ids, a.goaway(), a.closed.is_set()
    refused, ids, goaway, closed = await asyncio.to_thread(go)
    assert refused == ids[-5:]
    assert goaway is None and not closed
