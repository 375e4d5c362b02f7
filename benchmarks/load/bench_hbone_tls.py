"""CPU cost of an HBONE connection's data path with TLS, in memory: the C
record calls (core/hbone/native/_native.c) against the pure-Python path.

Two real HboneConnections (client and server roles) on real `tlsio` TLS
protocols, TLS 1.3 with the mesh's contexts and certificates, joined by an
in-memory "TCP" that hands each side's writes to the other's
`data_received`. No sockets and no event-loop wakeups, so the figures are the
Python + OpenSSL work per request and per byte and nothing else; the same
harness runs under callgrind for instruction counts (docs/bench/profiles/).

- 1 KB round trips: 1 KB through a tunnel and 1 KB back, 100 per call;
- bulk: 1 MiB through a tunnel, read out on the far side, WINDOW_UPDATEs back.

    .venv/bin/python -m pytest benchmarks/load/bench_hbone_tls.py -o python_files='bench_*.py' \\
        --benchmark-enable -p no:xdist
    .venv/bin/python -m shoal.benchmarks.load.bench_hbone_tls rr|bulk N   # one path, for callgrind
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from shoal.core.hbone import fastpath, tlsio
from shoal.core.hbone.connection import HboneConnection
from shoal.core.identity.tls import client_context, server_context

SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
KB = 1024
MIB = 1024 * 1024
ROUND_TRIPS = 100


class MemoryTcp:
    """One direction's end of the in-memory TCP: what `_TlsProtocol` writes."""

    def __init__(self, name: str) -> None:
        self.out: list[bytes] = []
        self.name = name
        self.closing = False

    def write(self, data) -> None:
        self.out.append(bytes(data))

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def make_protocols(pki) -> tuple:
    """The two TLS protocols of an HBONE pair, the server accepting every
    tunnel: (client HboneConnection, client protocol, server protocol, the
    list the server's accepted streams are appended to, in order)."""
    cctx = client_context(pki.issue(CLIENT_ID))
    sctx = server_context(pki.issue(SERVER_ID))
    server_streams: list = []

    def on_request(conn, stream, req):
        conn.core.accept(req.stream_id)
        conn.flush()
        server_streams.append(stream)
    client_conn = HboneConnection(client=True, expected_identities=(SERVER_ID,))
    client = tlsio._TlsProtocol(cctx, server_side=False, app=client_conn, handshake_timeout=10)
    server = tlsio.server_protocol(
        sctx, lambda: HboneConnection(client=False, on_request=on_request),
        handshake_timeout=10, on_failure=lambda proto, exc: None)
    return client_conn, client, server, server_streams


class Link:
    """A client and a server HBONE connection over TLS in memory, one tunnel open."""

    def __init__(self, pki) -> None:
        self.client_conn, self.client, self.server, self.server_streams = make_protocols(pki)
        self.c_tcp, self.s_tcp = MemoryTcp("client"), MemoryTcp("server")
        self.server.connection_made(self.s_tcp)
        self.client.connection_made(self.c_tcp)
        self.pump()

    def pump(self, read: int | None = None) -> None:
        """Deliver writes both ways until neither side has anything to send,
        in reads of at most `read` bytes if given (as a socket's reads cut
        them), else everything written in one read."""
        while self.c_tcp.out or self.s_tcp.out:
            for src, dst in ((self.c_tcp, self.server), (self.s_tcp, self.client)):
                if src.out:
                    data = b"".join(src.out)
                    src.out.clear()
                    step = read or len(data)
                    for i in range(0, len(data), step):
                        dst.data_received(data[i:i + step])

    async def open(self):
        stream = self.client_conn.open_stream("10.0.0.5:8080")
        self.pump()
        await stream.wait_open()
        return stream, self.server_streams[-1]


async def round_trips(link: Link, c, s, n: int = ROUND_TRIPS, payload: bytes = b"q" * KB) -> None:
    for _ in range(n):
        await c.write(payload)
        link.pump()
        got = await s.read()
        await s.write(got)
        link.pump()
        await c.read()


async def bulk(link: Link, c, s, payload: bytes) -> None:
    await c.write(payload)
    link.pump()
    left = len(payload)
    while left:
        left -= len(await s.read())
        link.pump()


def _setup(path: str):
    from tests.helpers.pki import TestPKI
    if path == "python":
        fastpath.native = None
    loop = asyncio.new_event_loop()
    link = loop.run_until_complete(_make(TestPKI()))
    return loop, link


async def _make(pki):
    link = Link(pki)
    c, s = await link.open()
    return link, c, s


@pytest.fixture(params=["native", "python"])
def link(request, monkeypatch):
    if request.param == "native" and fastpath.native is None:
        pytest.skip("the C module is not built")
    monkeypatch.setattr(fastpath, "native", fastpath.native)
    loop, made = _setup(request.param)
    yield loop, made
    loop.close()


def test_tls_1kb_round_trips(benchmark, link):
    """100 round trips of 1 KB each way through one tunnel, both proxies."""
    loop, (lk, c, s) = link
    benchmark(lambda: loop.run_until_complete(round_trips(lk, c, s)))


def test_tls_bulk_mib(benchmark, link):
    """1 MiB through one tunnel, both proxies."""
    loop, (lk, c, s) = link
    payload = bytes(MIB)
    benchmark(lambda: loop.run_until_complete(bulk(lk, c, s, payload)))


def main() -> None:
    what, n = sys.argv[1], int(sys.argv[2])
    loop, (lk, c, s) = _setup("python" if fastpath.native is None else "native")
    if what == "rr":
        loop.run_until_complete(round_trips(lk, c, s, n))
    else:
        payload = bytes(MIB)
        for _ in range(n):
            loop.run_until_complete(bulk(lk, c, s, payload))


if __name__ == "__main__":
    main()
