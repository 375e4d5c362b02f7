"""CPU cost of a ztunnel pair's relay per 1 KB request, in one process: the
plain socket → HBONE → plain socket path with and without its C halves
(core/hbone/native/relay.c, send.c).

The HBONE pair of bench_hbone_tls (two real HboneConnections on real tlsio
TLS 1.3, joined in memory), with each tunnel piped (core.pipe's sinks, as
`pipe()` installs them) to a TcpEnd on a real socket pair: the "app" writes
1 KB on the client side, it crosses both proxies to the server-side app,
which answers 1 KB. Per round trip that is each ztunnel's receive and send
half once in each direction, without the load run's processes and event
loop wakeups, so callgrind can count it (docs/bench/profiles/):

    valgrind --tool=callgrind .venv/bin/python -m shoal.benchmarks.load.bench_ztunnel_relay c 20
    (and 220; `records` instead of `c`: the C record calls only, as before the relay)

`bulk` after the count makes it N MiB from the client's app to the server's
(`c 1 bulk` and `c 9 bulk` for the cost per MiB), the link cutting the
ciphertext into reads of WIRE_READ bytes as a loopback socket does, so the
256 KiB DATA frames the client sends arrive in pieces, as in the load runs.
`uvloop` after that runs it on uvloop, as shoal's workers do (the C TcpPump
then reads the client app's socket into its buffer: plain.c); without it,
on asyncio's loop. `held` pushes into the tunnels as `pipe()` does, with the
TcpEnd as the source write_held may hold (without it, write_nowait); then
on the Python path (`python`) core.pipe.SizedReads sizes its reads to the
send window, and `unsized` leaves them unsized (as before SizedReads).

`socket` joins the two HBONE connections by a real socket pair instead of
the in-memory Link (SocketLink): the loop then reads their TLS sockets, and
on the C path through tlsio's TlsPump (core/hbone/native/tlspump.c), which
the in-memory Link, calling data_received itself, never runs. Counting
TlsPump's per-read cost needs it (with `uvloop`, as the workers run):

    valgrind --tool=callgrind .venv/bin/python -m shoal.benchmarks.load.bench_ztunnel_relay c 20 uvloop socket
"""

from __future__ import annotations

import asyncio
import socket
import sys

from shoal.benchmarks.load.bench_hbone_tls import KB, Link, make_protocols
from shoal.core.hbone import fastpath
from shoal.core.hbone.connection import HboneConnection
from shoal.core.pipe import TcpEnd, _counted

# A request is on the other side's socket after a loop iteration or two (the
# TcpEnd's read); this many without it means something broke.
MAX_SPINS = 100
MIB = 1024 * 1024
# The bulk run's TCP reads: what a loopback socket read returned in the load
# runs (64 KiB, the usual skb coalescing), smaller than a DATA frame.
WIRE_READ = 64 * 1024
# The bulk run's app writes: a socket pair takes about this much at once.
APP_WRITE = 128 * 1024


class SocketLink:
    """Link's client and server HBONE connections over a real socket pair:
    the loop moves the bytes (pump() has nothing to do)."""

    async def start(self, pki) -> None:
        self.client_conn, self.client, self.server, self.server_streams = make_protocols(pki)
        loop = asyncio.get_running_loop()
        c_sock, s_sock = socket.socketpair()
        await loop.create_connection(lambda: self.server, sock=s_sock)
        await loop.create_connection(lambda: self.client, sock=c_sock)
        await self.client.handshake
        await self.server.handshake

    def pump(self, read: int | None = None) -> None:
        pass

    async def open(self):
        stream = self.client_conn.open_stream("10.0.0.5:8080")
        await stream.wait_open()
        while not self.server_streams:
            await asyncio.sleep(0)
        return stream, self.server_streams[-1]


class Relay:
    """Both ztunnels' relays on one HBONE link (in memory, or SocketLink)."""

    async def start(self, pki, held: bool = False, unsized: bool = False,
                    sockets: bool = False) -> None:
        self.link: Link | SocketLink
        if sockets:
            self.link = SocketLink()
            await self.link.start(pki)
        else:
            self.link = Link(pki)
        self.c, self.s = await self.link.open()
        loop = asyncio.get_running_loop()
        self.app_c, mine_c = socket.socketpair()
        self.app_s, mine_s = socket.socketpair()
        self.app_c.setblocking(False)
        self.app_s.setblocking(False)
        _, self.end_c = await loop.create_connection(TcpEnd, sock=mine_c)
        _, self.end_s = await loop.create_connection(TcpEnd, sock=mine_s)
        pushed = [0, 0, 0, 0]
        for end, stream, i in ((self.end_c, self.c, 0), (self.end_s, self.s, 2)):
            stream.set_sink(_counted(end, pushed, i))
            push = _counted(stream, pushed, i + 1, end if held else None)
            if unsized and hasattr(push, "send_room"):
                del push.send_room
            end.set_sink(push)

    async def _through(self, app: socket.socket, peer: socket.socket, payload: bytes) -> None:
        """`payload` from one app to the other through both proxies. The link
        is pumped until all of it arrived: a keepalive PING (under valgrind a
        run outlasts the keepalive interval) must not pass for the request."""
        app.sendall(payload)
        got = 0
        for _ in range(MAX_SPINS):
            await asyncio.sleep(0)
            self.link.pump()
            try:
                while got < len(payload):
                    got += len(peer.recv(65536))
                return
            except BlockingIOError:
                continue
        raise RuntimeError("the request did not get through both proxies")

    async def bulk(self, mib: int) -> None:
        """`mib` MiB from the client's app to the server's app."""
        payload = memoryview(bytes(range(256)) * (MIB // 256))
        for _ in range(mib):
            sent = got = spins = 0
            while got < MIB:
                spins += 1
                if spins > MAX_SPINS * 100:
                    raise RuntimeError(f"bulk stalled at {got} of {MIB} bytes")
                if sent < MIB:
                    try:
                        sent += self.app_c.send(payload[sent:sent + APP_WRITE])
                    except BlockingIOError:
                        pass
                await asyncio.sleep(0)
                self.link.pump(WIRE_READ)
                try:
                    while got < MIB:
                        got += len(self.app_s.recv(MIB))
                except BlockingIOError:
                    pass

    async def round_trips(self, n: int, payload: bytes = b"q" * KB) -> None:
        for _ in range(n):
            await self._through(self.app_c, self.app_s, payload)
            await self._through(self.app_s, self.app_c, payload)


def main() -> None:
    from tests.helpers.pki import TestPKI
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "records":
        HboneConnection.native_relay = lambda self, sslsock, raw: None        # type: ignore
        HboneConnection.native_sender = lambda self, *a: None                 # type: ignore
    elif mode == "python":
        fastpath.native = None
    extra = sys.argv[3:]
    loop: asyncio.AbstractEventLoop
    if "uvloop" in extra:
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    relay = Relay()
    loop.run_until_complete(relay.start(TestPKI(), "held" in extra, "unsized" in extra,
                                        "socket" in extra))
    if "bulk" in extra:
        loop.run_until_complete(relay.bulk(n))
        return
    loop.run_until_complete(relay.round_trips(n))
    if mode == "c":
        assert relay.link.server._relay.frames >= n and relay.link.client._relay.frames >= n


if __name__ == "__main__":
    main()
