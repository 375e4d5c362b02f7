"""The load runs' peer pairs (stunnel, haproxy) start without sending
anything to their backend: a probe connection to a pair's front port would
reach iperf3 -s a moment later, through both hops, as a stray client, and
iperf3 aborts the test then under way ("control socket has closed
unexpectedly": `make bench-load`'s "stunnel: iperf3 failed twice")."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from shoal.benchmarks.load import hbone as load_hbone
from tests.helpers.ports import free_port, listening
from tests.helpers.wait import wait_for
from tests.helpers.ztunnel_peers import haproxy_pair, iperf3_server, stunnel_pair

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Enough for iperf3 to set up its streams and end normally, small enough to be quick.
IPERF_BYTES = "1M"


def _one_run(port: int, server_log: Path, nth: int) -> None:
    """The `nth` test through `port`, until iperf3 -s has finished it: it
    logs its banner again once it has closed the test's control connection
    (through both hops, after our client exited). Sooner, a next test is
    refused as busy, or stopping the server cuts this one short."""
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", IPERF_BYTES],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: _tests_seen(server_log).count("Server listening") > nth, 10,
             lambda: f"iperf3 -s to finish test {nth}:\n" + _tests_seen(server_log))


def _tests_seen(log: Path) -> str:
    """What iperf3 -s logged: one "Server listening" line per test served,
    an "error" line for each aborted one."""
    return log.read_text(errors="replace")


def test_listening_needs_no_connection():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
        assert listening("127.0.0.1", port)
        assert not listening("127.0.0.2", port)
    assert not listening("127.0.0.1", port)


def test_hbone_load_stunnel_pair_sends_no_stray_test(tmp_path):
    iperf_port = free_port()
    iperf = iperf3_server("127.0.0.1", iperf_port, tmp_path)
    pki = load_hbone.TestPKI()
    files = (load_hbone.write_pem(pki.issue(load_hbone.SERVER_ID), tmp_path, "server"),
             load_hbone.write_pem(pki.issue(load_hbone.CLIENT_ID), tmp_path, "client"))
    pair = load_hbone.start_stunnel(tmp_path, files, iperf_port)
    try:
        _one_run(pair.port, iperf.log_path, 1)
        _one_run(pair.port, iperf.log_path, 2)
    finally:
        pair.stop()
        iperf.stop()
    log = _tests_seen(iperf.log_path)
    assert "error" not in log, log
    # The first test and the second (iperf3 -s logs the next one's banner).
    assert log.count("Server listening") == 3, log


@pytest.mark.parametrize("peers", [stunnel_pair, haproxy_pair])
def test_ztunnel_load_peers_send_no_stray_test(tmp_path, peers):
    port = free_port()
    iperf = iperf3_server("127.0.0.1", port, tmp_path)
    front = free_port()
    procs = peers(front, free_port(), ("127.0.0.1", port), tmp_path)
    try:
        _one_run(front, iperf.log_path, 1)
    finally:
        for p in procs:
            p.stop()
        iperf.stop()
    log = _tests_seen(iperf.log_path)
    assert "error" not in log, log
    assert log.count("Server listening") == 2, log
