"""waypoint.frontdoor: the first bytes decide HTTP/2 (preface) or HTTP/1.1,
however the client's bytes are split."""

from __future__ import annotations

from shoal.waypoint import frontdoor
from shoal.waypoint.h2server import PREFACE


class Stream:
    def __init__(self, *reads: bytes) -> None:
        self.reads = list(reads)

    async def read(self, n: int = 65536) -> bytes:
        return self.reads.pop(0) if self.reads else b""


async def test_a_preface_sent_byte_by_byte_is_gathered_whole():
    data = PREFACE + b"\x00\x00\x00\x04"
    first = await frontdoor.peek(Stream(*(data[i:i + 1] for i in range(len(data)))))
    assert first == PREFACE and frontdoor.is_preface(first)


async def test_an_http1_request_is_not_held_back_waiting_for_more():
    assert await frontdoor.peek(Stream(b"G", b"ET / HTTP/1.1\r\n\r\n")) == b"G"
    # "P" could start a preface: read on until it cannot ("PU" of PUT).
    put = await frontdoor.peek(Stream(b"P", b"UT / HTTP/1.1\r\n\r\n", b"never read"))
    assert put == b"PUT / HTTP/1.1\r\n\r\n" and not frontdoor.is_preface(put)


async def test_a_silent_client_gives_nothing():
    assert await frontdoor.peek(Stream()) == b""


def test_every_prefix_of_the_preface_may_still_be_one_and_nothing_else_is():
    for i in range(1, len(PREFACE) + 1):
        assert frontdoor.h2_prefix(PREFACE[:i])
    assert not frontdoor.h2_prefix(b"PRI * HTTP/1.1")
    assert not frontdoor.h2_prefix(b"GET / HTTP/1.1\r\n")
    assert not frontdoor.is_preface(PREFACE[:-1])
