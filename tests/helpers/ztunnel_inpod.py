"""A real in-pod node for ztunnel e2e tests: the node agent (`shoal
node-agent run`), a ztunnel in `--mode inpod`, and "pods" (network
namespaces) wired by the real CNI chain (bridge + host-local + shoal-cni).

    node = InPodNode(tmp_path, workers=2); node.start()
    pod = node.add_pod("amb", "web-0")         # CNI ADD: enrolled, captured
    listeners(pod.ns)                          # what `ss -ltn` shows in it
    node.delete_pod(pod)                       # CNI DEL: released
    node.stop()

Every name (netns, bridge, subnet) is unique per test; `stop()` removes it all.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from shoal.cni import chain
from tests.helpers.cni_agent import CNI_PATH, ROOT, start_agent
from tests.helpers.wait import wait_for
from tests.helpers.cni_netns import sh, unique
from tests.helpers.ports import free_port
from tests.helpers.ztunnel_peers import Proc

SHOAL = [sys.executable, "-m", "shoal.cli"]
PROXY_PORTS = (15001, 15006, 15008)
# A ztunnel in-pod worker boots in about a second; the agent needs its ack.
START_TIMEOUT = 30.0

NS_YAML = """apiVersion: v1
kind: Namespace
metadata: {{name: {name}, labels: {labels}}}
"""


@dataclass
class Pod:
    namespace: str
    name: str
    ns: str                 # netns name (/run/netns/<ns>)
    att: chain.Attachment
    ip: str = ""
    result: dict | None = None

    @property
    def uid(self) -> str:
        return f"Kubernetes//Pod/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Listening:
    port: int
    inode: int
    pids: frozenset[int]


def listeners(ns: str) -> list[Listening]:
    """The TCP listeners `ss -ltn` shows in a netns (with inode and holders)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnHpe"], capture_output=True,
                         text=True, timeout=10).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        port = int(fields[3].rsplit(":", 1)[1])
        ino = re.search(r"\bino:(\d+)", line)
        pids = frozenset(int(p) for p in re.findall(r"pid=(\d+)", line))
        found.append(Listening(port=port, inode=int(ino.group(1)) if ino else 0, pids=pids))
    return found


def proxy_listeners(ns: str) -> list[Listening]:
    return [x for x in listeners(ns) if x.port in PROXY_PORTS]


def children(pid: int) -> set[int]:
    """Direct children of a process (a shards supervisor's workers and watcher)."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return out


class InPodNode:
    def __init__(self, tmp: Path, *, workers: int = 2, ca: bool = False) -> None:
        self.tmp = Path(tmp)
        self.workers = workers
        self.with_ca = ca
        self.ca: Proc | None = None
        self.run_dir = str(self.tmp / "run")
        self.agent_cfg = str(self.tmp / "agent-config")
        self.mesh_cfg = self.tmp / "mesh-config"
        self.logs = self.tmp / "logs"
        for d in (self.run_dir, self.agent_cfg, self.mesh_cfg, self.logs):
            os.makedirs(d, exist_ok=True)
        octet = random.randint(16, 250)
        self.bridge = unique("szb")
        self.gateway = f"10.{octet}.9.1"
        self.conf = chain.conflist("shoal-zt", bridge=self.bridge, subnet=f"10.{octet}.9.0/24",
                                   gateway=self.gateway, ipam_dir=str(self.tmp / "ipam"),
                                   agent_run_dir=self.run_dir)
        self.admin = free_port()
        self.pods: list[Pod] = []
        self.mesh_docs: list[dict] = []
        self.agent = None
        self.ztunnel: Proc | None = None

    # -- processes ------------------------------------------------------------
    def start(self) -> None:
        for name, ambient in (("amb", True), ("plain", False)):
            labels = '{"istio.io/dataplane-mode": "ambient"}' if ambient else "{}"
            with open(os.path.join(self.agent_cfg, f"ns-{name}.yaml"), "w") as f:
                f.write(NS_YAML.format(name=name, labels=labels))
        self.write_mesh()
        cred = self.tmp / "cred"
        ca_address = "127.0.0.1:1"
        if self.with_ca:
            ca_address = f"127.0.0.1:{self._start_ca()}"
        subprocess.run([*SHOAL, "controlplane", "issue-node-cert", "--state-dir",
                        str(self.tmp / "ca-state"), "--node", "node-1", "--out", str(cred)],
                       check=True, cwd=ROOT, capture_output=True, timeout=30)
        self.agent = start_agent(self.run_dir, self.agent_cfg)
        # Without a CA (ca=False) only plaintext inbound and listeners work;
        # certificate fetches fail and are retried in the background.
        self.ztunnel = Proc("ztunnel", [
            *SHOAL, "ztunnel", "run", "--node", "node-1", "--mode", "inpod",
            "--zds-socket", os.path.join(self.run_dir, "ztunnel.sock"),
            "--config", str(self.mesh_cfg), "--ca-address", ca_address,
            "--ca-credential", str(cred), "--admin-port", str(self.admin),
            "--metrics-port", "0", "--readiness-port", "0",
            "--workers", str(self.workers), "--drain-timeout", "1"], self.logs, cwd=ROOT)
        wait_for(lambda: self.ztunnel.p.poll() is not None or self.zds_connections() >= self.workers,
                 timeout=START_TIMEOUT, what="ztunnel workers connected to the node agent")
        assert self.ztunnel.p.poll() is None, self.ztunnel.tail()

    def _start_ca(self) -> int:
        port_file = self.tmp / "ca.port"
        self.ca = Proc("controlplane", [*SHOAL, "controlplane", "run", "--port", "0",
                                        "--host", "127.0.0.1", "--state-dir",
                                        str(self.tmp / "ca-state"), "--config", str(self.mesh_cfg),
                                        "--port-file", str(port_file)], self.logs, cwd=ROOT)
        wait_for(lambda: port_file.exists() or self.ca.p.poll() is not None,
                 timeout=START_TIMEOUT, what="the control plane")
        assert self.ca.p.poll() is None, self.ca.tail()
        return int(port_file.read_text())

    def zds_connections(self) -> int:
        """ZDS connections the agent accepted so far (its log says each)."""
        return self.agent.output().count("ztunnel connected")

    def stop(self) -> None:
        if self.ztunnel is not None:
            self.ztunnel.stop()
        if self.agent is not None:
            self.agent.stop()
        if self.ca is not None:
            self.ca.stop()
        for pod in self.pods:
            subprocess.run(["ip", "netns", "del", pod.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def worker_pids(self) -> set[int]:
        return children(self.ztunnel.pid)

    def logs_tail(self) -> str:
        return (f"--- ztunnel\n{self.ztunnel.tail()}\n--- agent\n"
                f"{self.agent.output()[-3000:] if self.agent else ''}")

    # -- routing config (the ztunnel's --config) ----------------------------------
    def write_mesh(self) -> None:
        docs = [{"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "amb", "labels": {"istio.io/dataplane-mode": "ambient"}}},
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}},
                *self.mesh_docs]
        tmp = self.mesh_cfg / ".mesh.yaml.tmp"
        tmp.write_text(yaml.safe_dump_all(docs))
        os.replace(tmp, self.mesh_cfg / "mesh.yaml")

    def publish(self, pod: Pod, port: int | None = None) -> None:
        """Put a running pod (with its CNI-given IP) into the routing config."""
        ports = [{"name": "tcp", "containerPort": port}] if port else []
        self.mesh_docs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": {"app": pod.name}},
            "spec": {"nodeName": "node-1", "serviceAccountName": pod.name,
                     "containers": [{"name": "app", "ports": ports}]},
            "status": {"podIP": pod.ip, "phase": "Running"}})
        self.write_mesh()

    def config_dump(self) -> dict:
        import orjson
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/config_dump",
                                    timeout=5) as r:
            return orjson.loads(r.read())

    def knows(self, ip: str) -> bool:
        """The ztunnel's routing table has a workload with this IP."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/config_dump",
                                        timeout=2) as r:
                return ip in r.read().decode()
        except OSError:
            return False

    # -- pods -----------------------------------------------------------------------
    def new_pod(self, namespace: str, name: str) -> Pod:
        ns = unique("szp")
        sh("ip", "netns", "add", ns)
        att = chain.Attachment(container_id=unique("cid"), netns=f"/run/netns/{ns}",
                               args={"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": namespace,
                                     "K8S_POD_NAME": name})
        pod = Pod(namespace=namespace, name=name, ns=ns, att=att)
        self.pods.append(pod)
        return pod

    def add(self, pod: Pod) -> Pod:
        """CNI ADD (returns once the agent and every ztunnel worker acked)."""
        pod.result = chain.add(self.conf, pod.att, CNI_PATH)
        pod.ip = pod.result["ips"][0]["address"].split("/")[0]
        return pod

    def delete(self, pod: Pod) -> None:
        chain.delete(self.conf, pod.att, CNI_PATH, pod.result)

    def add_pod(self, namespace: str, name: str) -> Pod:
        return self.add(self.new_pod(namespace, name))


def ns_popen(ns: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_popen(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def deadline_poll(cond, timeout: float, what: str):
    """Poll `cond` until true (returns its value) or fail after `timeout`."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > end:
            if not v:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            return v
        time.sleep(0.05)
