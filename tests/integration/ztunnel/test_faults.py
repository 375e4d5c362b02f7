"""Faults under a client loop that counts failures (issue: reliability).

client -> ztunnel node-a (2 workers) -> HBONE -> ztunnel node-b (2 workers)
-> echo. With the CA stopped, the nodes must keep serving on the
certificates they hold (the node's certificate store, core/identity/store.py)
through a kill -9 of a worker, a SIGHUP and a SIGUSR2; and Prometheus
counters must not restart from zero after SIGUSR2.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.helpers.ports import APP_PORT
from tests.helpers.shards_proc import ClientLoop, alive, wait_for
from tests.helpers.ztunnel_mesh import Mesh, metric_sum

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(150)]

VIP = "10.96.0.30"
# Client loop concurrency: at most this many connections are in flight when
# a worker is killed, so at most this many can fail with it.
CONCURRENCY = 4
# Connections after a fault that must all succeed: enough to reach every
# worker of both nodes many times (SO_REUSEPORT spreads by hash).
AFTER_FAULT = 200


@pytest.fixture
def mesh(tmp_path):
    m = Mesh(tmp_path, workers=2)
    m.pod("client", node="node-a", sa="sleep")
    m.pod("echo", node="node-b", app="echo", port=APP_PORT)
    m.service("echo", vip=VIP, port=80, target=APP_PORT, app="echo")
    m.fix("node-a", VIP, 80)
    try:
        m.start()
        yield m
    finally:
        m.stop()


def client_loop(mesh: Mesh) -> ClientLoop:
    n = mesh.nodes["node-a"]
    return ClientLoop(n.fixed[(VIP, 80)], concurrency=CONCURRENCY, host=n.proxy_ip,
                      source=mesh.pods["client"].ip)


def stop_ca(mesh: Mesh) -> None:
    mesh.ca.stop()
    assert mesh.ca.p.poll() is not None


def failures(stats) -> int:
    return stats.refused + stats.reset + len(stats.other)


# Log lines shown per node when a connection failed (the tail is megabytes).
DIAG_LINES = 60


def explain(mesh: Mesh, stats, events: list[tuple[float, str]]) -> str:
    """What a rare failure needs to be placed: when it came relative to the
    signals, and what each node logged at warning level or about its port."""
    out = [f"events (monotonic): {events}", f"failed (monotonic, kind, client port): {stats.failed}"]
    ports = [str(port) for _, _, port in stats.failed if port]
    for node in ("node-a", "node-b"):
        lines = [line for line in mesh.nodes[node].proc.tail(5_000_000).splitlines()
                 if any(w in line.lower() for w in ("warn", "error", "reset", "refus"))
                 or any(p in line for p in ports)]
        out.append(f"{node}: {len(lines)} lines, the last {DIAG_LINES}:")
        out += lines[-DIAG_LINES:]
    return "\n".join(out)


def test_ca_down_kill9_of_a_worker_loses_only_its_in_flight_connections(mesh):
    with client_loop(mesh) as loop:
        stop_ca(mesh)
        killed = 0
        for node in ("node-a", "node-b"):
            before = mesh.worker_pids(node)
            os.kill(sorted(before)[0], signal.SIGKILL)
            killed += 1
            wait_for(lambda: len(mesh.worker_pids(node) - before) == 1
                     and len(mesh.worker_pids(node)) == 2, 15, f"{node}'s replacement worker")
            loop.ok_since(AFTER_FAULT)
        stats = loop.stop()
    print(f"CA down + kill -9 of one worker per node: {stats}")   # docs/operations.md
    assert failures(stats) <= killed * CONCURRENCY, stats
    for node in ("node-a", "node-b"):
        log = mesh.nodes[node].proc.tail(5_000_000)
        assert "certificate adopted from the node store" in log
        assert "worker failed to boot" not in log


def listening_sockets(addrs: list[tuple[str, int]]) -> set[int]:
    """Inodes of the listening TCP sockets bound to `addrs` (IPv4, this netns)."""
    wanted = {f"{int.from_bytes(socket.inet_aton(ip), 'little'):08X}:{port:04X}"
              for ip, port in addrs}
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {int(r[9]) for r in rows if r[3] == "0A" and r[1] in wanted}


def node_listeners(mesh: Mesh, node: str) -> set[int]:
    """The node's capture listeners and its pods' HBONE listeners."""
    n = mesh.nodes[node]
    addrs = [(n.proxy_ip, port) for port in n.fixed.values()]
    addrs += [(p.ip, mesh.hbone_port) for p in mesh.pods.values() if p.node == node]
    return listening_sockets(addrs)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR2], ids=["SIGHUP", "SIGUSR2"])
def test_ca_down_reload_and_upgrade_lose_nothing(mesh, sig):
    opened_before = 0.0
    events: list[tuple[float, str]] = []
    with client_loop(mesh) as loop:
        stop_ca(mesh)
        loop.ok_since(50)
        opened_before = metric_sum(mesh.metrics("node-b"), "istio_tcp_connections_opened_total",
                                   reporter="destination")
        assert opened_before > 0
        for node in ("node-a", "node-b"):
            n = mesh.nodes[node]
            old = mesh.worker_pids(node)
            sockets = node_listeners(mesh, node)
            assert sockets, f"{node} listens nowhere?"
            events.append((time.monotonic(), f"{node} {signal.Signals(sig).name}"))
            os.kill(n.proc.pid, sig)
            if sig == signal.SIGUSR2:   # the old supervisor hands over and leaves
                n.proc.p.wait(30)
                events.append((time.monotonic(), f"{node} old supervisor exited"))
            wait_for(lambda: len(mesh.worker_pids(node)) == 2
                     and not (mesh.worker_pids(node) & old), 30, f"{node}'s new workers")
            loop.ok_since(AFTER_FAULT)
            # The new workers serve the very listening sockets the old ones
            # did: a socket closed and opened anew resets what is queued on
            # it (the new workers must not boot on an empty routing table).
            assert node_listeners(mesh, node) == sockets
        stats = loop.stop()
    print(f"CA down + {signal.Signals(sig).name} of both nodes: {stats}")   # docs/operations.md
    assert failures(stats) == 0, explain(mesh, stats, events)
    # Counters go on from their totals (SIGUSR2: the new supervisor adopted
    # the metrics directory with the old workers' files).
    opened_after = metric_sum(mesh.metrics("node-b"), "istio_tcp_connections_opened_total",
                              reporter="destination")
    assert opened_after >= opened_before + 2 * AFTER_FAULT
    for node in ("node-a", "node-b"):
        assert "certificate fetch failed" not in mesh.nodes[node].proc.tail(5_000_000)

