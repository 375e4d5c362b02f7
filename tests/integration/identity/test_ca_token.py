"""The CA on a cluster: ServiceAccount tokens checked with TokenReview, pods
read from the Kubernetes API, the root kept in a Secret. A real
`shoal controlplane run --kubeconfig` against the test API server, called by
the ztunnel's real CA client (TokenCaClient)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.core.identity.caclient import CaError, TokenCaClient
from shoal.core.identity.certs import csr_pem, make_csr
from shoal.core.identity.spiffe import Identity
from tests.helpers.kube_apiserver import KubeApiServer

ROOT = Path(__file__).resolve().parents[3]
NODE_ACCOUNT = ("shoal-system", "shoal-ztunnel")
START_TIMEOUT = 30.0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def pod(ns, name, node, sa):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": node, "serviceAccountName": sa},
            "status": {"phase": "Running", "podIP": "10.0.0.1" if name == "sleep" else None}}


class Ca:
    def __init__(self, api: KubeApiServer, tmp: Path, state: str) -> None:
        self.port_file = tmp / f"{state}.port"
        self.log = open(tmp / f"{state}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli", "controlplane", "run", "--port", "0",
             "--host", "127.0.0.1", "--state-dir", str(tmp / state),
             "--kubeconfig", str(tmp / "kubeconfig"), "--port-file", str(self.port_file),
             "--root-secret", "shoal-system/shoal-ca-secret",
             "--root-configmap", "shoal-system/shoal-ca-root-cert"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.port_file.exists():
            assert self.proc.poll() is None, (tmp / f"{state}.log").read_text()
            assert time.monotonic() < deadline, "the CA did not start"
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def cluster(tmp_path):
    api = KubeApiServer().start()
    api.write_kubeconfig(str(tmp_path / "kubeconfig"))
    api.create(pod("shoal-system", "shoal-ztunnel-a", "node-a", "shoal-ztunnel"))
    api.create(pod("default", "sleep", "node-a", "sleep"))
    api.create(pod("default", "echo", "node-b", "echo"))
    api.add_token("tok-node-a", username="system:serviceaccount:shoal-system:shoal-ztunnel",
                  audiences=["istio-ca"], pod=("shoal-system", "shoal-ztunnel-a"))
    api.add_token("tok-other-audience", username="system:serviceaccount:shoal-system:shoal-ztunnel",
                  audiences=["https://kubernetes.default.svc"], pod=("shoal-system", "shoal-ztunnel-a"))
    api.add_token("tok-waypoint", username="system:serviceaccount:default:waypoint",
                  audiences=["istio-ca"], pod=("default", "waypoint-0"))
    cas: list[Ca] = []

    def start(state="state"):
        ca = Ca(api, tmp_path, state)
        cas.append(ca)
        return ca
    yield api, tmp_path, start
    for ca in cas:
        if ca.proc.poll() is None:
            ca.stop()
    api.stop()


def client(api, tmp, port, token) -> TokenCaClient:
    (tmp / f"{token}.token").write_text(token)
    roots = api.get("configmaps", "shoal-system", "shoal-ca-root-cert")["data"]["root-cert.pem"]
    (tmp / "roots.pem").write_text(roots)
    return TokenCaClient(("127.0.0.1", port), tmp / f"{token}.token", tmp / "roots.pem",
                         trust_domain="cluster.local")


def sign(c: TokenCaClient, ns: str, sa: str):
    ident = Identity(trust_domain="cluster.local", namespace=ns, service_account=sa)
    _, csr = make_csr(ident)
    return asyncio.run(c.sign(ident, csr_pem(csr)))


def test_node_token_gets_only_identities_of_pods_on_its_node(cluster):
    api, tmp, start = cluster
    ca = start()
    c = client(api, tmp, ca.port, "tok-node-a")
    resp = sign(c, "default", "sleep")                  # sleep runs on node-a
    assert resp.cert_chain and resp.trust_bundle
    with pytest.raises(CaError) as e:
        sign(c, "default", "echo")                      # echo runs on node-b
    assert (e.value.status, e.value.code) == (403, "not_on_node")


def test_tokens_the_review_rejects_are_refused(cluster):
    api, tmp, start = cluster
    ca = start()
    for token, code in (("tok-forged", "token_rejected"), ("tok-other-audience", "token_rejected")):
        with pytest.raises(CaError) as e:
            sign(client(api, tmp, ca.port, token), "default", "sleep")
        assert (e.value.status, e.value.code) == (401, code), token


def test_other_accounts_get_only_their_own_identity(cluster):
    api, tmp, start = cluster
    ca = start()
    c = client(api, tmp, ca.port, "tok-waypoint")
    assert sign(c, "default", "waypoint").cert_chain
    with pytest.raises(CaError) as e:
        sign(c, "default", "sleep")
    assert (e.value.status, e.value.code) == (403, "not_waypoint_identity")


def test_root_kept_in_a_secret_survives_a_restart_with_empty_state(cluster):
    api, tmp, start = cluster
    first = start("state-1")
    issued = sign(client(api, tmp, first.port, "tok-node-a"), "default", "sleep")
    secret = api.get("secrets", "shoal-system", "shoal-ca-secret")
    assert set(secret["data"]) == {"root-cert.pem", "root-key.pem", "trust-bundle.pem"}
    first.stop()
    second = start("state-2")                           # a new pod: nothing on disk
    again = sign(client(api, tmp, second.port, "tok-node-a"), "default", "sleep")
    assert again.trust_bundle == issued.trust_bundle    # same root: old certificates stay valid
    assert issued.cert_chain[-1].issuer == again.trust_bundle[0].subject
