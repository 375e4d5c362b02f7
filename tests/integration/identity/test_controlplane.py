"""`shoal controlplane` as real processes: node credentials, node-scoped signing, rotation."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from shoal.core.identity.caclient import CaClient, CaError, load_credential
from shoal.core.identity.certs import csr_pem, make_csr
from shoal.core.identity.manager import CertManager
from shoal.core.identity.spiffe import Identity, identity_of_cert
from tests.helpers.pki import TestPKI
from tests.helpers.shards_proc import wakeup_rates
from tests.helpers.wait import until, wait_for

# The CA answers on a loaded machine within seconds; polling its log and bundle.
CA_WAIT = 15.0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

REVIEWS = Identity.parse("spiffe://cluster.local/ns/bookinfo/sa/reviews")
RATINGS = Identity.parse("spiffe://cluster.local/ns/bookinfo/sa/ratings")
WAYPOINT = Identity.parse("spiffe://cluster.local/ns/bookinfo/sa/waypoint")

PODS = """
apiVersion: v1
kind: Namespace
metadata: {{name: bookinfo, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-1, namespace: bookinfo, labels: {{app: reviews}}}}
spec:
  nodeName: node-1
  serviceAccountName: reviews
  containers: [{{name: app, image: x}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: ratings-1, namespace: bookinfo, labels: {{app: ratings}}}}
spec:
  nodeName: {ratings_node}
  serviceAccountName: ratings
  containers: [{{name: app, image: x}}]
"""


ROOT = Path(__file__).resolve().parents[3]


def shoal(*args, **kw):
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, **kw)


def _start(tmp_path, *, cli_credentials: bool, extra: tuple[str, ...] = ()):
    """A controlplane process with node-1 and waypoint credentials in tmp_path."""
    state, config = tmp_path / "state", tmp_path / "config"
    config.mkdir()
    (config / "pods.yaml").write_text(PODS.format(ratings_node="node-2"))
    creds = (["--node", "node-1", "--out", str(tmp_path / "node-1")],
             ["--waypoint", "bookinfo/waypoint", "--out", str(tmp_path / "waypoint")])
    for args in creds:
        if cli_credentials:
            out = shoal("controlplane", "issue-node-cert", "--state-dir", str(state), *args)
            assert out.returncode == 0, out.stderr
        else:  # the same code path, in-process (saves a Python start per credential)
            from click.testing import CliRunner

            from shoal.controlplane.cli import controlplane
            res = CliRunner().invoke(controlplane, ["issue-node-cert", "--state-dir", str(state),
                                                    *extra, *args])
            assert res.exit_code == 0, res.output
    port_file = tmp_path / "port"
    log = open(tmp_path / "cp.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "controlplane", "run", "--port", "0",
                             "--host", "127.0.0.1", "--state-dir", str(state), "--config", str(config),
                             "--port-file", str(port_file), *extra], stderr=log, cwd=ROOT)

    def started() -> bool:
        assert proc.poll() is None, (tmp_path / "cp.log").read_text()
        return port_file.exists()

    wait_for(started, 30, "the controlplane's --port-file")
    return {"port": int(port_file.read_text()), "dir": tmp_path, "state": state, "config": config,
            "proc": proc, "log": tmp_path / "cp.log", "log_file": log}


def _stop(cp):
    proc = cp["proc"]
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cp["log_file"].close()


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    """Shared by the tests that change nothing (config and state stay as written)."""
    env = _start(tmp_path_factory.mktemp("cp"), cli_credentials=True)
    yield env
    _stop(env)


@pytest.fixture
def fresh_cp(tmp_path):
    """A private control plane for tests that change its config or state."""
    env = _start(tmp_path, cli_credentials=False)
    yield env
    _stop(env)


def log_lines(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.startswith(b"{")]


def test_issue_node_cert_writes_a_credential_with_a_private_key_file(cp):
    d = cp["dir"] / "node-1"
    assert sorted(os.listdir(d)) == ["cert-chain.pem", "key.pem", "root-cert.pem"]
    assert oct((d / "key.pem").stat().st_mode & 0o777) == "0o600"
    cred = load_credential(d)
    assert cred.identity.uri == "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
    assert cred.leaf.subject.rfc4514_string() == "CN=node:node-1"


async def test_node_gets_identities_of_its_pods_only(cp):
    client = CaClient.from_dir(("127.0.0.1", cp["port"]), cp["dir"] / "node-1")
    key, csr = make_csr(REVIEWS)
    resp = await client.sign(REVIEWS, csr_pem(csr))
    assert identity_of_cert(resp.cert_chain[0]) == REVIEWS
    resp.cert_chain[0].verify_directly_issued_by(resp.trust_bundle[0])
    with pytest.raises(CaError) as e:
        await client.sign(RATINGS, csr_pem(make_csr(RATINGS)[1]))
    assert e.value.status == 403 and e.value.code == "not_on_node"
    assert "node node-1 has no pod running as " + RATINGS.uri in str(e.value)
    # the refusal is logged as JSON with the reason
    refusals = await until(
        lambda: [x for x in log_lines(cp["log"]) if x.get("code") == "not_on_node"],
        timeout=CA_WAIT, what="403 log line")
    assert refusals[0]["status"] == 403 and refusals[0]["caller"] == "node:node-1"
    assert refusals[0]["identity"] == RATINGS.uri


async def test_csr_for_another_identity_than_requested_is_refused(cp):
    client = CaClient.from_dir(("127.0.0.1", cp["port"]), cp["dir"] / "node-1")
    with pytest.raises(CaError) as e:
        await client.sign(REVIEWS, csr_pem(make_csr(RATINGS)[1]))
    assert e.value.status == 400 and e.value.code == "csr_identity_mismatch"


async def _ratings_allowed(client: CaClient) -> bool:
    """Whether the CA signs RATINGS for `client`'s node now; any refusal but
    "not on this node" fails the test."""
    try:
        await client.sign(RATINGS, csr_pem(make_csr(RATINGS)[1]))
        return True
    except CaError as e:
        assert e.code == "not_on_node"
        return False


async def test_config_change_is_picked_up(fresh_cp):
    cp = fresh_cp
    client = CaClient.from_dir(("127.0.0.1", cp["port"]), cp["dir"] / "node-1")
    (cp["config"] / "pods.yaml").write_text(PODS.format(ratings_node="node-1"))

    await until(lambda: _ratings_allowed(client), timeout=CA_WAIT,
                what="ratings allowed on node-1")


async def test_waypoint_credential_gets_only_its_own_identity(cp):
    client = CaClient.from_dir(("127.0.0.1", cp["port"]), cp["dir"] / "waypoint")
    resp = await client.sign(WAYPOINT, csr_pem(make_csr(WAYPOINT)[1]))
    assert identity_of_cert(resp.cert_chain[0]) == WAYPOINT
    with pytest.raises(CaError) as e:
        await client.sign(REVIEWS, csr_pem(make_csr(REVIEWS)[1]))
    assert e.value.status == 403 and e.value.code == "not_waypoint_identity"


async def test_a_workload_certificate_is_not_a_node_credential(cp):
    node = CaClient.from_dir(("127.0.0.1", cp["port"]), cp["dir"] / "node-1")
    mgr = CertManager(node, node_name="node-1", background=False)
    try:
        workload = await mgr.fetch(REVIEWS)
    finally:
        await mgr.close()
    with pytest.raises(CaError) as e:
        await CaClient(("127.0.0.1", cp["port"]), workload).sign(REVIEWS, csr_pem(make_csr(REVIEWS)[1]))
    assert e.value.status == 403 and e.value.code == "not_a_node_credential"


async def test_a_credential_from_another_ca_cannot_connect(cp):
    stranger = TestPKI().issue("spiffe://cluster.local/ns/istio-system/sa/ztunnel")
    with pytest.raises(CaError) as e:
        await CaClient(("127.0.0.1", cp["port"]), stranger, timeout=5).trust_bundle()
    assert e.value.code in ("ca_unreachable", "ca_identity_mismatch")


async def test_root_rotation_reaches_the_running_ca(fresh_cp):
    cp = fresh_cp
    client = CaClient.from_dir(("127.0.0.1", cp["port"]), cp["dir"] / "node-1")
    assert len(await client.trust_bundle()) == 1
    out = shoal("controlplane", "rotate-root", "--state-dir", str(cp["state"]), "--phase", "add")
    assert out.returncode == 0, out.stderr
    # picked up by the CA's file poll (every 2 s)
    bundle = await until(lambda: _bundle_if(client, 2), timeout=CA_WAIT, what="2 roots in the bundle")
    out = shoal("controlplane", "rotate-root", "--state-dir", str(cp["state"]), "--phase", "activate")
    assert out.returncode == 0, out.stderr
    cp["proc"].send_signal(signal.SIGHUP)      # reload now instead of at the next file poll
    client.update_roots(bundle)

    async def signed_by_new_root():
        resp = await client.sign(REVIEWS, csr_pem(make_csr(REVIEWS)[1]))
        return resp.cert_chain[0].issuer == bundle[1].subject

    await until(signed_by_new_root, timeout=CA_WAIT, what="leaf signed by the new root")


async def _bundle_if(client, n):
    try:
        bundle = await client.trust_bundle()
    except CaError:
        return None
    return bundle if len(bundle) == n else None


def test_cli_refuses_bad_options(tmp_path):
    out = shoal("controlplane", "issue-node-cert", "--state-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert out.returncode != 0 and "exactly one of --node or --waypoint" in out.stderr
    out = shoal("controlplane", "run", "--state-dir", str(tmp_path), "--cert-ttl", "200d")
    assert out.returncode != 0 and "--cert-ttl" in out.stderr


async def test_plug_in_ca_signs_with_the_operators_intermediate(tmp_path):
    pki = TestPKI(name="operator root")
    cacerts = pki.write_cacerts(tmp_path / "cacerts")
    cp = _start(tmp_path, cli_credentials=False, extra=("--cacerts", str(cacerts)))
    try:
        client = CaClient.from_dir(("127.0.0.1", cp["port"]), cp["dir"] / "node-1")
        resp = await client.sign(REVIEWS, csr_pem(make_csr(REVIEWS)[1]))
        leaf, inter = resp.cert_chain
        assert resp.trust_bundle == (pki.root_cert,)
        leaf.verify_directly_issued_by(inter)
        inter.verify_directly_issued_by(pki.root_cert)
    finally:
        _stop(cp)


async def test_a_pod_in_a_new_subdirectory_is_picked_up(fresh_cp):
    # The new directory is watched once the event of its creation arrives;
    # the file written into it right after must not be missed.
    cp = fresh_cp
    client = CaClient.from_dir(("127.0.0.1", cp["port"]), cp["dir"] / "node-1")
    later = cp["config"] / "later"
    later.mkdir()
    (later / "pods.yaml").write_text("""
apiVersion: v1
kind: Pod
metadata: {name: ratings-2, namespace: bookinfo, labels: {app: ratings}}
spec:
  nodeName: node-1
  serviceAccountName: ratings
  containers: [{name: app, image: x}]
""")

    await until(lambda: _ratings_allowed(client), timeout=CA_WAIT,
                what="ratings-2 allowed on node-1")


# An idle CA wakes for its state files' check (every 2 s: 0.5-0.7 runs/s
# measured in 1.5 s windows); the stat of every config file 4 times a second
# in a thread that the inotify watch replaced ran 14-18 times a second.
CA_IDLE_MAX_PER_S = 2.0
# Windows go on until one is quiet (tests/helpers/shards_proc.py), so a CA
# still busy from the module's earlier tests on a loaded CI run passes once
# it settles, and a poll fails in all of them.
CA_IDLE_WINDOW = 1.5
CA_IDLE_MAX_WINDOWS = 8


def test_an_idle_control_plane_does_not_poll_its_config(cp):
    pid = cp["proc"].pid
    rates = wakeup_rates({pid: CA_IDLE_MAX_PER_S}, CA_IDLE_WINDOW, CA_IDLE_MAX_WINDOWS)[pid]
    assert min(rates) <= CA_IDLE_MAX_PER_S, \
        f"idle control plane woke {min(rates):.1f} times/s at the quietest (each window: {rates})"
