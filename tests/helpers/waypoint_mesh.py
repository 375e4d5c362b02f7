"""Build a small mesh for waypoint tests and run the waypoint app in-process.

    mesh = Mesh()                                    # waypoint default/waypoint
    echo = mesh.service("echo", [backend_v1, backend_v2], port=8080)
    mesh.route(HTTPRoute(...)); mesh.policy(Authorization(...))
    async with running_waypoint(mesh, plaintext=True) as wp:
        wp.plaintext_port, wp.hbone_port, wp.app

The app is the real `WaypointApp`, started on a real `shards.app.WorkerContext`
(listeners on loopback); only the supervisor is left out, so a test can swap
the routing view between requests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import socket
import threading
import time

from shoal.core.drain import DrainWatcher
from shoal.core.sockets import DefaultSocketFactory
from shoal.core.records import (Service, ServicePort, Waypoint, WaypointRef, Workload)
from shoal.routing.view import StaticView

WP_NS, WP_NAME = "default", "waypoint"
# The waypoint's own identity (its service account in its namespace).
WAYPOINT_ID = f"spiffe://cluster.local/ns/{WP_NS}/sa/{WP_NAME}"


class Mesh:
    def __init__(self, namespace: str = "default") -> None:
        self.ns = namespace
        self.workloads: list[Workload] = []
        self.services: list[Service] = []
        self.routes: list = []
        self.policies: list = []
        self.waypoints = [Waypoint(name=WP_NAME, namespace=WP_NS, waypoint_for="service")]
        self._vip = random.randint(1, 200)
        self._generation = 1

    def service(self, name: str, backends, *, port: int = 8080, protocol: str = "TCP",
                waypoint: bool = True, healthy: bool = True) -> Service:
        self._vip += 1
        host = f"{name}.{self.ns}.svc.cluster.local"
        key = f"{self.ns}/{host}"
        uids = []
        for i, b in enumerate(backends):
            uid = f"Kubernetes//Pod/{self.ns}/{name}-{i}"
            uids.append(uid)
            self.workloads.append(Workload(
                uid=uid, name=f"{name}-{i}", namespace=self.ns, ips=(b.host,),
                protocol=protocol, services={key: {port: b.port}},
                status="HEALTHY" if healthy else "UNHEALTHY",
                labels={"app": name, "version": getattr(b, "name", "v1")}))
        svc = Service(name=name, namespace=self.ns, hostname=host,
                      vips=(f"10.96.{self._vip // 250}.{self._vip % 250 + 1}",),
                      ports=(ServicePort(port=port, target_port=port, name="http"),),
                      endpoints=tuple(sorted(uids)),
                      waypoint=WaypointRef(namespace=WP_NS, name=WP_NAME) if waypoint else None)
        self.services.append(svc)
        return svc

    def route(self, r) -> None:
        self.routes.append(r)

    def policy(self, p) -> None:
        self.policies.append(p)

    def view(self) -> StaticView:
        self._generation += 1
        return StaticView(workloads=self.workloads, services=self.services,
                          policies=self.policies, waypoints=self.waypoints,
                          routes=self.routes, generation=self._generation)


@contextlib.asynccontextmanager
async def echo_waypoint(backend, *, close_backend: bool = False, **opts):
    """`running_waypoint(mesh, **opts)` for a mesh whose one service,
    "echo", is `backend`; with `close_backend`, the backend (a test's own,
    not a fixture's) is closed after, however the waypoint ended."""
    mesh = Mesh()
    mesh.service("echo", [backend])
    try:
        async with running_waypoint(mesh, **opts) as wp:
            yield wp
    finally:
        if close_backend:
            backend.close()


async def recorded_conversation(monkeypatch, backend, converse, records: list):
    """`converse(port)` (in a thread) through a waypoint whose one service,
    "echo", is `backend`: what it returns; every telemetry record goes to
    `records` too. The backend is closed after."""
    import asyncio
    async with echo_waypoint(backend, close_backend=True) as wp:
        tel = wp.app.proxy.telemetry
        real = tel.record
        monkeypatch.setattr(tel, "record", lambda r: (records.append(r), real(r)))
        return await asyncio.to_thread(converse, wp.plaintext_port)


# What differs between two runs of one conversation however the waypoint
# decides: when each request ran and for how long.
TIMELESS = {"start_time", "duration", "duration_ms"}


async def scripted_run(monkeypatch, conversation: list, gap: float, converse, mask):
    """`converse(port)` through a waypoint whose echo backend answers the
    i-th request head with the i-th answer of `conversation` (items ending
    in (the parts, sent `gap` seconds apart; close after?)). Returns what
    `converse` returned, the heads the backend got and each telemetry
    record as (access-log fields, metric labels), with `mask` putting aside
    the ids a run makes at random and the times, backend port and VIP a
    run has of its own: two runs of one conversation compare equal."""
    backend = ScriptedBackend([(parts, close) for *_, parts, close in conversation], gap)
    records: list = []
    got = await recorded_conversation(monkeypatch, backend, converse, records)
    heads = [mask(h.decode("latin-1")) for h in backend.received]
    port = f"127.0.0.1:{backend.port}"

    def same_run(v):
        if not isinstance(v, str):
            return v
        return re.sub(r"^10\.96\.\d+\.\d+:", "<vip>:", mask(v).replace(port, "<backend>"))
    from shoal.waypoint.telemetry import access_fields, labels_for
    telemetry = [({k: same_run(v) for k, v in access_fields(r).items() if k not in TIMELESS},
                  {k: same_run(v) for k, v in labels_for(r).items()}) for r in records]
    return got, heads, telemetry


def echo_samples() -> dict[str, float]:
    """The waypoint's HTTP metric samples for the echo service (durations
    by count only: their buckets depend on the machine's speed; no
    `_created` timestamps: a series new in the first run but not in the
    second would differ when this test runs first in its process)."""
    from shoal.core import metrics as core_metrics
    out = {}
    for ln in core_metrics.render()[0].decode().splitlines():
        m = re.match(r"(istio_\w+)\{(.*)\} (\S+)$", ln)
        if m and 'destination_service="echo.default.svc.cluster.local"' in m.group(2) and \
                not m.group(1).startswith(("istio_request_duration_milliseconds_bucket",
                                           "istio_request_duration_milliseconds_sum")) and \
                not m.group(1).endswith("_created"):
            out[f"{m.group(1)}{{{m.group(2)}}}"] = float(m.group(3))
    return out


def sample_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """How each `echo_samples()` series moved from `before` to `after`
    (the ones that did not move left out)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def reserve_port(host: str = "127.0.0.1") -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket: its port is ours until
    closed, and a listener may bind it too (only the listener accepts)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, 0))
    return s


class _ViewBox:
    """Lets a test replace the view under a running app (a new generation)."""

    def __init__(self, view) -> None:
        self.view = view

    def __getattr__(self, name):
        return getattr(self.view, name)


class RunningWaypoint:
    def __init__(self, app, box, plaintext_port, hbone_port) -> None:
        self.app, self.box = app, box
        self.plaintext_port, self.hbone_port = plaintext_port, hbone_port

    def set_view(self, view) -> None:
        self.box.view = view


@contextlib.asynccontextmanager
async def running_waypoint(mesh: Mesh, *, plaintext: bool = True, hbone_cert_dir: str | None = None,
                           hbone_ca: tuple[str, str] | None = None,
                           upstream_plaintext: bool = True, metrics=None, **opts):
    from shoal.shards.app import WorkerContext
    from shoal.waypoint.app import WaypointApp, WaypointOptions
    reserved = []
    pport = hport = 0
    if plaintext:
        s = reserve_port()
        reserved.append(s)
        pport = s.getsockname()[1]
    if hbone_ca:
        opts.update(ca_address=hbone_ca[0], ca_credential_dir=hbone_ca[1])
    if hbone_cert_dir or hbone_ca:
        s = reserve_port()
        reserved.append(s)
        hport = s.getsockname()[1]
    options = WaypointOptions(name=WP_NAME, namespace=WP_NS, bind="127.0.0.1",
                              hbone_port=hport, plaintext_port=pport, cert_dir=hbone_cert_dir,
                              upstream_plaintext=upstream_plaintext, **opts)
    if metrics is None:
        from shoal.core import metrics as core_metrics
        metrics = core_metrics.istio()
    box = _ViewBox(mesh.view())
    ctx = WorkerContext(worker_id=0, routing=box, sockets=DefaultSocketFactory(),
                        drain=DrainWatcher(), metrics=metrics,
                        log=logging.getLogger("shoal.test.waypoint"))
    app = WaypointApp(options)
    await app.start(ctx)
    try:
        yield RunningWaypoint(app, box, pport, hport)
    finally:
        for lst in ctx.listeners:
            close = getattr(lst, "close", None)
            if close is not None:
                res = close()
                if hasattr(res, "__await__"):
                    await res
        await app.drain(time.monotonic() + 1.0)
        for s in reserved:
            s.close()


def loopback_ip() -> str:
    """A distinct 127/8 address per backend (every test process its own /16)."""
    loopback_ip.n = getattr(loopback_ip, "n", 0) + 1
    base = 20 + os.getpid() % 200
    return f"127.{base}.{loopback_ip.n // 250}.{loopback_ip.n % 250 + 1}"


def access_lines(written: list[bytes]) -> list[dict]:
    """The access-log records an `AccessLog(written.append)` wrote, parsed."""
    return [json.loads(line) for chunk in written for line in chunk.splitlines()]


def flushed_access_lines(wp, written: list[bytes]) -> list[dict]:
    """`access_lines(written)` once the waypoint has flushed its telemetry."""
    wp.app.proxy.telemetry.flush()
    return access_lines(written)


def capture_access_log(wp) -> list[bytes]:
    """Send the running waypoint's access log into a list (read it with
    `access_lines` after `wp.app.proxy.telemetry.flush()`)."""
    from shoal.waypoint.telemetry import AccessLog
    written: list[bytes] = []
    wp.app.proxy.telemetry.log = AccessLog(written.append)
    return written


class ThreadedBackend:
    """A raw-socket backend (usable as one in `Mesh.service`): a thread per
    connection runs `serve(conn)`, which subclasses give."""

    host, name = "127.0.0.1", "v1"

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((self.host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    @staticmethod
    def request_heads(conn: socket.socket):
        """Each request head (without its blank line) the peer sends on
        `conn`, bodyless requests assumed, until it closes."""
        buf = b""
        while data := conn.recv(65536):
            buf += data
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                yield head

    def close(self) -> None:
        # close() alone leaves the acceptor blocked in accept() for the rest
        # of the process (Linux does not wake it); shutdown() does, so no
        # thread outlives the test into the next ones of this xdist worker.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass                # already closed
        self.sock.close()
        self.acceptor.join()


class ScriptedBackend(ThreadedBackend):
    """Answers the i-th request head (on any connection) with `answers[i]`:
    (the parts it sends, pausing `gap` seconds between them so they arrive
    as separate reads; close the connection after it?). Records the heads."""

    def __init__(self, answers: list, gap: float) -> None:
        super().__init__()
        self.answers, self.gap = answers, gap
        self.received: list[bytes] = []

    def serve(self, conn: socket.socket) -> None:
        for head in self.request_heads(conn):
            self.received.append(head)
            parts, close = self.answers[len(self.received) - 1]
            for i, part in enumerate(parts):
                if i:
                    time.sleep(self.gap)
                conn.sendall(part)
            if close:
                return


class CutBackend(ThreadedBackend):
    """Announces 1000 body bytes, sends 10 and closes: an upstream cut mid-body."""

    def serve(self, conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
