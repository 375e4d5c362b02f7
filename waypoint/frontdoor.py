"""The front door: one client byte stream to the HTTP/1.1 or HTTP/2 server side.

A client of the waypoint speaks HTTP/1.1, or HTTP/2 with prior knowledge
(h2c; gRPC clients do). The first bytes tell them apart: an HTTP/2 client
opens with the 24-byte connection preface (RFC 9113 3.4), which no HTTP/1.1
request line can start with.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from shoal.core.pipe import READ_SIZE, Endpoint
from shoal.waypoint import h2server
from shoal.waypoint.downstream import IDLE_TIMEOUT, READ_ERRORS, Downstream, close_stream
from shoal.waypoint.h2server import PREFACE
from shoal.waypoint.server import H1Session


async def serve_stream(stream: Endpoint, down: Downstream, proxy: Any) -> None:
    """Serve HTTP/1.1, or HTTP/2 with prior knowledge (told apart by the
    client's first bytes), on one client byte stream."""
    first = await peek(stream)
    if not first:
        await close_stream(stream)
        return
    if is_preface(first):
        await h2server.serve(stream, first, dataclasses.replace(down, protocol="http2"), proxy)
        return
    session = H1Session(stream, down, proxy)
    session.events.extend(session.parser.receive_data(first))
    await session.run()


async def peek(stream: Endpoint) -> bytes:
    """The first bytes of a connection (b"" if it closed or stayed silent):
    at least the preface's length when they could still be one."""
    try:
        async with asyncio.timeout(IDLE_TIMEOUT):
            data = await stream.read(READ_SIZE)
            while data and len(data) < len(PREFACE) and h2_prefix(data):
                more = await stream.read(READ_SIZE)
                if not more:
                    break
                data += more
    except READ_ERRORS:
        return b""
    return data


def is_preface(data: bytes) -> bool:
    return data[:len(PREFACE)] == PREFACE


def h2_prefix(data: bytes) -> bool:
    """Could `data` still be the start of an HTTP/2 preface?"""
    return PREFACE.startswith(data[:len(PREFACE)])
