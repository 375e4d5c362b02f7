"""In-memory stand-ins for the waypoint's upstreams and client side."""

from __future__ import annotations

import asyncio

from shoal.waypoint.destination import Endpoint
from shoal.waypoint.exchange import UpstreamRequest
from shoal.waypoint.http1 import RequestReceived
from shoal.waypoint.message import RequestHead


class FakeResponse:
    def __init__(self, status=200, chunks=(b"ok",), *, trailers=None, fail_after=None,
                 headers=()) -> None:
        self.status, self.reason = status, ""
        self.headers = list(headers)
        self.content_length = None
        self.chunks = list(chunks)
        self.final_trailers = trailers
        self.trailers = None
        self.fail_after = fail_after
        self.finished = self.aborted = False

    async def read(self) -> bytes:
        if self.fail_after is not None and not self.chunks:
            raise self.fail_after
        if self.chunks:
            return self.chunks.pop(0)
        self.trailers = self.final_trailers
        return b""

    async def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True

    def upgraded(self):
        raise AssertionError("no upgrade here")


class FakeUpstream:
    """Answers each exchange with the next scripted outcome (a response, an
    error to raise, or "hang")."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[Endpoint, UpstreamRequest]] = []
        self.closed = False

    async def exchange(self, ep, req, informational):
        self.calls.append((ep, req))
        out = self.outcomes.pop(0)
        if out == "hang":
            await asyncio.sleep(3600)
        if isinstance(out, Exception):
            raise out
        return out

    def close(self) -> None:
        self.closed = True


class FakeSink:
    def __init__(self) -> None:
        self.events: list = []
        self.body = b""

    async def informational(self, status, headers):
        self.events.append(("informational", status))

    async def start(self, status, headers, *, content_length, reason="", no_body=False):
        self.events.append(("start", status, no_body))
        self.headers = headers

    async def send(self, data):
        self.body += data

    async def trailers(self, headers):
        self.events.append(("trailers", headers))

    async def finish(self):
        self.events.append(("finish",))

    async def local(self, status, body, extra):
        self.events.append(("local", status, body))
        return True

    def abort(self):
        self.events.append(("abort",))

    async def tunnel(self, upstream, first):
        raise AssertionError("no tunnel here")


class FakeBody:
    def __init__(self, *chunks: bytes, trailers=None) -> None:
        self.chunks = list(chunks)
        self.trailers = trailers

    async def read(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def request(method="POST", *, body_len=0, chunked=False, headers=()):
    head = RequestHead(method=method, target="/x", headers=[("host", "echo"), *headers])
    return RequestReceived(head=head, http_version="1.1", keep_alive=True, upgrade=False,
                           chunked=chunked, content_length=None if chunked else body_len)
