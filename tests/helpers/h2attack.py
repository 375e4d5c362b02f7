"""Hostile HBONE peers for the attack tests and `benchmarks/load/attacks.py`.

The attacker holds a valid client certificate (authentication is not what is
tested) and writes raw HTTP/2 frames (tests.helpers.h2raw) over real TLS 1.3.
`HonestClient` opens CONNECTs through shoal's own pool meanwhile, from
another thread, and counts what succeeded. `usage(pid)` reads a server
process's RSS, fds and CPU time from /proc.
"""

from __future__ import annotations

import asyncio
import os
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field

import hyperframe.frame as hf

from tests.helpers.h2raw import RawFrames, parse_frames
from tests.helpers.tlspump import TlsPump
from tests.helpers.wait import poll

ENHANCE_YOUR_CALM = 0xB
REFUSED_STREAM = 0x7


@dataclass
class Usage:
    rss_kib: int
    fds: int
    cpu_s: float


def usage(pid: int) -> Usage:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return Usage(rss_kib=rss, fds=fds, cpu_s=(int(parts[11]) + int(parts[12])) / tick)


class CountingEcho:
    """A threaded TCP echo server that counts the connections it accepted."""

    def __init__(self) -> None:
        outer = self
        self.accepted = 0

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.accepted += 1
                try:
                    while data := self.request.recv(65536):
                        self.request.sendall(data)
                except OSError:
                    pass

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            request_queue_size = 1024       # 200 tunnels connect at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tls_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


class Attack:
    """One attacker connection (tests.helpers.tlspump: one thread owns the
    TLS object); `received` keeps all the server sent."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self._conn = TlsPump(port, ctx)
        self.frames = RawFrames()
        self.received = self._conn.received
        self.closed = self._conn.closed
        self.send(self.frames.preface())

    def send(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        return self._conn.send(data)

    def send_all(self, chunks, *, stop_when_closed: bool = True) -> int:
        """Send each chunk until the server closes; returns how many went."""
        sent = 0
        for chunk in chunks:
            if (stop_when_closed and self.closed.is_set()) or not self.send(chunk):
                break
            sent += 1
        return sent

    def wait_closed(self, timeout: float = 10.0) -> bool:
        return self.closed.wait(timeout)

    def parsed(self) -> list:
        return parse_frames(bytes(self.received))

    def goaway(self) -> int | None:
        for f in self.parsed():
            if isinstance(f, hf.GoAwayFrame):
                return f.error_code
        return None

    def close(self) -> None:
        self._conn.close()


# -- the attacks: each returns the Attack (its connection) when done ----------

def rapid_reset(a: Attack, authority: str, pairs: int = 10_000) -> Attack:
    """CVE-2023-44487: HEADERS + RST_STREAM pairs as fast as TLS takes them."""
    f = a.frames
    batch = []
    for _ in range(pairs):
        sid = f.new_id()
        batch.append(f.headers(sid, authority=authority) + f.rst(sid))
    a.send_all(b"".join(batch[i:i + 500]) for i in range(0, pairs, 500))
    return a


def continuation_flood(a: Attack, authority: str, frames: int = 67,
                       size: int = 1024 * 1024) -> Attack:
    """CVE-2024-27316: one header block that never ends, 1 MiB per frame."""
    f = a.frames
    sid = f.new_id()
    a.send(f.headers(sid, end_headers=False, authority=authority))
    body = b"\x00" * size
    a.send_all(f.continuation(sid, body) for _ in range(frames))
    return a


def control_flood(a: Attack, kind: str, frames: int = 30_000) -> Attack:
    """PING / SETTINGS / WINDOW_UPDATE floods, 100 frames per write."""
    f = a.frames
    one = {"ping": f.ping(), "settings": f.settings(),
           "window_update": f.window_update(0, 1)}[kind]
    a.send_all(one * 100 for _ in range(frames // 100))
    return a


def empty_data_flood(a: Attack, authority: str, frames: int = 30_000) -> Attack:
    f = a.frames
    sid = f.new_id()
    a.send(f.headers(sid, authority=authority))
    a.send_all(f.data(sid, b"") * 100 for _ in range(frames // 100))
    return a


def too_many_streams(a: Attack, authority: str, limit: int = 200,
                     extra: int = 50) -> tuple[Attack, list[int]]:
    """Open `limit` tunnels, wait for their 200s, then `extra` more."""
    f = a.frames
    ok = [f.new_id() for _ in range(limit)]
    a.send(b"".join(f.headers(sid, authority=authority) for sid in ok))
    poll(lambda: len(_responses(a)) >= limit, 20)
    over = [f.new_id() for _ in range(extra)]
    a.send(b"".join(f.headers(sid, authority=authority) for sid in over))
    poll(lambda: len(refused(a)) >= extra or a.closed.is_set(), 20)
    return a, ok


def _responses(a: Attack) -> list:
    return [fr for fr in a.parsed() if isinstance(fr, hf.HeadersFrame)]


def refused(a: Attack) -> list[int]:
    return [fr.stream_id for fr in a.parsed()
            if isinstance(fr, hf.RstStreamFrame) and fr.error_code == REFUSED_STREAM]


def echo_on(a: Attack, sid: int, payload: bytes = b"still alive", timeout: float = 10) -> bool:
    """DATA on an open tunnel comes back as DATA (the connection survived)."""
    a.send(a.frames.data(sid, payload))
    return poll(lambda: any(isinstance(fr, hf.DataFrame) and fr.stream_id == sid
                             and payload in bytes(fr.data) for fr in a.parsed()), timeout)


@dataclass
class HonestClient:
    """CONNECT + one echo round trip every `interval`, through shoal's pool
    (a new HBONE connection each time, so handshakes are tested too)."""

    port: int
    client_cert: object                # core.identity WorkloadCert
    server_id: str
    authority: str
    interval: float = 0.05
    ok: int = 0
    failed: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> "HonestClient":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    async def once(self) -> None:
        from shoal.core.hbone.pool import HbonePool
        from shoal.core.identity.tls import client_context
        ctx = client_context(self.client_cert)
        pool = HbonePool(lambda _src: ctx)
        try:
            stream = await asyncio.wait_for(pool.open(
                src=self.client_cert.identity, dst_identities=(self.server_id,),
                address=("127.0.0.1", self.port), authority=self.authority), 10)
            await stream.write(b"ping")
            got = await asyncio.wait_for(stream.read(), 10)
            assert got == b"ping", got
            stream.close()
            self.ok += 1
        except Exception as e:          # recorded, asserted by the test
            self.failed.append(repr(e))
        finally:
            await pool.close()

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.once()
            await asyncio.sleep(self.interval)
        await self.once()               # and once more after the attack


def silent_connections(port: int, n: int, first: bytes = b"") -> list[socket.socket]:
    """`n` TCP connections that never finish a ClientHello (no certificate
    needed): they send `first` (e.g. the first byte of a TLS record) or nothing."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        if first:
            s.sendall(first)
        socks.append(s)
    return socks


def wait_usage(pid: int, cond, timeout: float = 10.0) -> Usage:
    """Poll the process's usage until `cond(usage)` holds (or the deadline)."""
    end = time.monotonic() + timeout
    u = usage(pid)
    while not cond(u) and time.monotonic() < end:
        time.sleep(0.05)
        u = usage(pid)
    return u


def client_hello() -> bytes:
    """A real TLS 1.3 ClientHello (ALPN h2), for connections that stop after it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()
