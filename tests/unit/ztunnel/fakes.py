"""In-memory stand-ins for the ztunnel proxy's I/O (pure pipeline tests)."""

from __future__ import annotations

import random
from collections import deque

from shoal.ztunnel.connections import ConnectionManager
from shoal.ztunnel.options import ZtunnelOptions
from shoal.ztunnel.proxy.inputs import Scope
from shoal.ztunnel.proxy.record import Tracker


class FakeMetrics:
    """Counts `inc` calls by (metric, reporter, response_flags)."""

    tcp_opened, tcp_closed, tcp_received, tcp_sent = "opened", "closed", "received", "sent"
    tcp_failed, sockets_open = "failed", "sockets_open"

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], float] = {}

    def inc(self, metric, labels, amount=1) -> None:
        key = (metric, labels["reporter"], labels.get("response_flags", "-"))
        self.counts[key] = self.counts.get(key, 0) + amount

    def total(self, metric: str) -> float:
        return sum(v for (m, _, _), v in self.counts.items() if m == metric)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeEnd:
    """A pipe endpoint: yields `incoming` chunks then EOF, keeps what it got."""

    def __init__(self, incoming=(), peer=("10.0.0.1", 40000)) -> None:
        self.incoming = deque(incoming)
        self.got: list[bytes] = []
        self.aborted = self.eof = self.closed = False
        self.bytes_read = self.bytes_written = self.bytes_received = 0
        self.transport = self
        self.peer = peer

    def get_extra_info(self, name):
        return self.peer if name == "peername" else None

    info = get_extra_info

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    async def read(self, n: int = 65536) -> bytes:
        data = self.incoming.popleft() if self.incoming else b""
        self.bytes_read += len(data)
        self.bytes_received += len(data)
        return data

    async def write(self, data) -> None:
        self.got.append(bytes(data))
        self.bytes_written += len(data)

    def write_eof(self) -> None:
        self.eof = True

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


class FakeCerts:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail

    async def fetch(self, identity):
        if self.fail is not None:
            raise self.fail


class FakePool:
    """Opens `stream`, or raises `error`; remembers the last request."""

    def __init__(self, stream=None, error: Exception | None = None) -> None:
        self.stream, self.error, self.opened = stream, error, None

    async def open(self, **kw):
        self.opened = kw
        if self.error is not None:
            raise self.error
        return self.stream


class FakeInputs:
    """What Outbound / Inbound / InboundPassthrough read of `ProxyInputs`."""

    def __init__(self, view, *, pool=None, certs=None, app=None, app_error=None,
                 pod_uid: str = "") -> None:
        self.options = ZtunnelOptions(node="n1")
        self.view = lambda: view
        self.rng = random.Random(4)
        self.scope = Scope(node="n1", pod_uid=pod_uid)
        self.local_ips: frozenset[str] = frozenset()
        self.metrics = FakeMetrics()
        self.clock = FakeClock()
        self.tracker = Tracker(self.metrics, clock=self.clock)
        self.connections = ConnectionManager()
        self.pool = pool or FakePool()
        self.certs = certs or FakeCerts()
        self.app, self.app_error = app, app_error
        self.connected: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int):
        return await self._connect(host, port)

    async def connect_app(self, host: str, port: int, client_ip: str):
        return await self._connect(host, port)

    async def _connect(self, host, port):
        self.connected.append((host, port))
        if self.app_error is not None:
            raise self.app_error
        return self.app
