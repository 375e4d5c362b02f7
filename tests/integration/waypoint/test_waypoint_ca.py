"""The production certificate path: the waypoint asks the control plane's CA
for its identity with a waypoint credential (`--ca-credential`), then
serves HBONE with the certificate it got."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.core.hbone.pool import HbonePool
from shoal.core.identity.caclient import load_credential
from shoal.core.identity.tls import client_context
from tests.helpers.waypoint_mesh import Mesh, running_waypoint
from tests.integration.waypoint.test_waypoint_hbone import WAYPOINT_ID, request

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(90)]
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def controlplane(tmp_path):
    state, config = tmp_path / "state", tmp_path / "config"
    config.mkdir()
    out = subprocess.run([sys.executable, "-m", "shoal.cli", "controlplane", "issue-node-cert",
                          "--state-dir", str(state), "--waypoint", "default/waypoint",
                          "--out", str(tmp_path / "cred")], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "controlplane", "run", "--port", "0",
                             "--host", "127.0.0.1", "--state-dir", str(state), "--config",
                             str(config), "--port-file", str(port_file)], cwd=ROOT,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "controlplane did not start"
        time.sleep(0.05)
    yield {"port": int(port_file.read_text()), "cred": tmp_path / "cred"}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_waypoint_certificate_from_the_ca(controlplane, backends):
    mesh = Mesh()
    svc = mesh.service("echo", [backends("v1")])
    cred = load_credential(controlplane["cred"])     # signed by the same root
    pool = HbonePool(lambda _src: client_context(cred))
    async with running_waypoint(mesh, plaintext=False, hbone_cert_dir=None,
                                hbone_ca=(f"127.0.0.1:{controlplane['port']}",
                                          str(controlplane["cred"]))) as wp:
        assert wp.app.certs is not None and wp.app.cert is not None
        assert wp.app.cert.identity.uri == WAYPOINT_ID
        assert wp.app.cert.serial != cred.serial        # a fresh 24 h leaf, not the credential
        stream = await pool.open(src=WAYPOINT_ID, dst_identities=(WAYPOINT_ID,),
                                 address=("127.0.0.1", wp.hbone_port),
                                 authority=f"{svc.vips[0]}:8080")
        assert (await request(stream))[0] == 200
    await pool.close()
