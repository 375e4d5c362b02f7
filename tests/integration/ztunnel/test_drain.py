"""A SIGTERM drain of the destination ztunnel does not reset running tunnels:
the HBONE server sends GOAWAY(NO_ERROR) and lets them finish within
`--drain-timeout` (client -> ztunnel A -> HBONE -> ztunnel B -> app)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time

import pytest

from tests.helpers.ports import APP_PORT
from tests.helpers.ztunnel_mesh import Mesh, echo_exact

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

# Long enough for the transfer after the SIGTERM on a loaded 2-core machine;
# the test asserts the node exits well before it (the tunnel ended first).
DRAIN_TIMEOUT = 20
CHUNK = 64 * 1024
# The echo app must not mistake the first bytes for HTTP or its XFER command.
PREFIX = b"drain-test:"


@pytest.fixture
def mesh(tmp_path):
    m = Mesh(tmp_path, workers=1, extra_args=("--drain-timeout", str(DRAIN_TIMEOUT)))
    m.pod("client", node="node-a", sa="sleep")
    m.pod("echo-1", node="node-b", app="echo", port=APP_PORT)
    m.fix("node-a", m.pods["echo-1"].ip, APP_PORT)
    try:
        m.start()
        yield m
    finally:
        m.stop()


def _wait_log(proc, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in proc.tail(1_000_000):
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in {proc.name}'s log after {timeout}s:\n"
                         f"{proc.tail()}")


def test_long_lived_connection_survives_sigterm_of_destination_ztunnel(mesh):
    node_b = mesh.nodes["node-b"]
    sent = hashlib.sha256()
    echoed = hashlib.sha256()
    with mesh.connect("client", mesh.pods["echo-1"].ip, APP_PORT, timeout=15) as s:
        first = PREFIX + os.urandom(CHUNK)
        sent.update(first)
        echoed.update(echo_exact(s, first))            # the tunnel is up
        os.kill(node_b.proc.pid, signal.SIGTERM)         # the supervisor: a node drain
        _wait_log(node_b.proc, "worker draining", timeout=10)
        stopped_at = time.monotonic()
        for _ in range(32):                               # 2 MiB more while it drains
            data = os.urandom(CHUNK)
            sent.update(data)
            echoed.update(echo_exact(s, data))
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b""                          # the app's FIN, not a reset
    assert echoed.hexdigest() == sent.hexdigest()
    # The worker finished as soon as its last tunnel closed, not at the deadline.
    node_b.proc.p.wait(DRAIN_TIMEOUT)
    assert time.monotonic() - stopped_at < DRAIN_TIMEOUT / 2
    assert node_b.proc.p.returncode == 0, node_b.proc.tail()
    log_a = mesh.nodes["node-a"].proc.tail(1_000_000)
    assert "lost" not in log_a, log_a[-3000:]
