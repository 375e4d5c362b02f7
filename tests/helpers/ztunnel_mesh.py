"""Two ztunnel "nodes" on loopback, a real CA, real apps: the integration rig.

Every workload IP is a unique 127.x.y.z address (loopback accepts all of
127/8), so tests running in parallel never collide; every port is free-picked.
Outbound capture uses the TEST-ONLY fixed-target listeners of `ztunnel run`
(one listener per original destination), since REDIRECT needs a netns; the
client binds its workload IP as source address so the ztunnel knows who it is.

    mesh = Mesh(tmp_path, workers=2)
    mesh.pod("client", node="node-a", sa="sleep")
    mesh.pod("echo-1", node="node-b", app="echo", port=8080)
    mesh.service("echo", vip="10.96.0.10", port=80, target=8080)
    mesh.start()                      # CA, ztunnels, apps
    port = mesh.outbound("node-a", "10.96.0.10", 80)   # where the client connects
    with mesh.connect("client", "10.96.0.10", 80) as s: ...
    mesh.stop()
"""

from __future__ import annotations

import os
import random
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.helpers.ports import free_port
from tests.helpers.shards_proc import next_cpu, on_cpu
from tests.helpers.ztunnel_peers import Proc, python_app

SHOAL = [sys.executable, "-m", "shoal.cli"]
ROOT = str(Path(__file__).resolve().parents[2])
START_TIMEOUT = 30.0
# The supervisor's log line once every slot's worker said "ready" (shards/supervisor.py).
SUPERVISOR_READY = b"supervisor ready"
# With a test API server: the node proxies' account and the CA's root ConfigMap.
NODE_ACCOUNT = ("shoal-system", "shoal-ztunnel")
ROOT_CONFIGMAP = "shoal-system/shoal-ca-root-cert"


def unique_prefix() -> str:
    """127.A.B. with A, B from the pid and randomness (never 127.0.0.x)."""
    rnd = random.Random(os.getpid() ^ time.monotonic_ns())
    return f"127.{rnd.randint(100, 250)}.{rnd.randint(1, 250)}."


@dataclass
class PodSpec:
    name: str
    node: str
    ip: str
    sa: str
    labels: dict
    port: int | None        # app port (None: a client only)
    namespace: str = "default"


@dataclass
class Node:
    name: str
    proxy_ip: str
    admin: int
    metrics: int
    readiness: int
    cred: Path
    fixed: dict = field(default_factory=dict)     # (ip, port) -> listen port
    proc: Proc | None = None


class Mesh:
    def __init__(self, tmp: Path, *, workers: int = 1, nodes=("node-a", "node-b"),
                 hbone_port: int | None = None, extra_args: tuple[str, ...] = (),
                 api=None) -> None:
        self.tmp = Path(tmp)
        # A KubeApiServer (tests/helpers/kube_apiserver.py): the ztunnels then read
        # the config from the Kubernetes API only (--kubeconfig), not the directory.
        self.api = api
        self.kubeconfig = api.write_kubeconfig(str(self.tmp / "kubeconfig")) if api else None
        self.workers = workers
        self.extra_args = tuple(extra_args)     # more `ztunnel run` flags
        self.prefix = unique_prefix()
        self.config = self.tmp / "config"
        self.config.mkdir(parents=True, exist_ok=True)
        self.logs = self.tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        # Random by default; the waypoint test needs Istio's 15008 (the waypoint
        # dials endpoints on it), safe on the rig's unique 127.x.y.z addresses.
        self.hbone_port = hbone_port or free_port()
        self.extra_docs: list[dict] = []
        self.pods: dict[str, PodSpec] = {}
        self.services: list[dict] = []
        self.policies: dict[str, dict] = {}
        self._next_ip = 1
        self.nodes = {n: Node(name=n, proxy_ip=self._ip(), admin=free_port(),
                              metrics=free_port(), readiness=free_port(),
                              cred=self.tmp / f"cred-{n}") for n in nodes}
        self.apps: dict[str, Proc] = {}
        self.ca: Proc | None = None
        self.ca_port = 0

    def _ip(self) -> str:
        ip = f"{self.prefix}{self._next_ip}"
        self._next_ip += 1
        return ip

    # -- config -----------------------------------------------------------
    def pod(self, name: str, *, node: str, sa: str | None = None, app: str | None = None,
            port: int | None = None, namespace: str = "default", labels=None) -> PodSpec:
        lab = {"app": app or name, **(labels or {})}
        spec = PodSpec(name=name, node=node, ip=self._ip(), sa=sa or name, labels=lab,
                       port=port, namespace=namespace)
        self.pods[name] = spec
        return spec

    def service(self, name: str, *, vip: str, port: int, target: int | str, app: str,
                namespace: str = "default") -> None:
        self.services.append({"apiVersion": "v1", "kind": "Service",
                              "metadata": {"name": name, "namespace": namespace},
                              "spec": {"clusterIP": vip, "selector": {"app": app},
                                       "ports": [{"name": "tcp", "port": port,
                                                  "targetPort": target}]}})

    def policy(self, doc: dict) -> None:
        self.policies[doc["metadata"]["name"]] = doc

    @staticmethod
    def pod_doc(p: PodSpec, *, ready: bool = True) -> dict:
        ports = [{"name": "tcp", "containerPort": p.port}] if p.port else []
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
                "spec": {"nodeName": p.node, "serviceAccountName": p.sa,
                         "containers": [{"name": "app", "ports": ports}]},
                "status": {"podIP": p.ip, "phase": "Running",
                           "conditions": [{"type": "Ready", "status": str(ready)}]}}

    def write_config(self) -> None:
        docs = [{"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}}}
                for ns in sorted({p.namespace for p in self.pods.values()})]
        docs += [self.pod_doc(p) for p in self.pods.values()]
        docs += self.services + self.extra_docs
        self._write("mesh.yaml", docs)
        self._write("policies.yaml", list(self.policies.values()))
        for d in docs + list(self.policies.values()) if self.api else ():
            self.api.apply(d)

    def _write(self, name: str, docs: list) -> None:
        tmp = self.config / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump_all(docs) if docs else "")
        os.replace(tmp, self.config / name)

    def apply_policies(self) -> None:
        """Rewrite the policy file (the ztunnels' watchers pick it up)."""
        self._write("policies.yaml", list(self.policies.values()))
        for d in self.policies.values() if self.api else ():
            self.api.apply(d)

    # -- processes -----------------------------------------------------------
    def fix(self, node: str, ip: str, port: int) -> int:
        """Declare (before start) an outbound fixed-target listener on `node`."""
        n = self.nodes[node]
        if (ip, port) not in n.fixed:
            n.fixed[(ip, port)] = free_port()
        return n.fixed[(ip, port)]

    def start(self) -> None:
        """The CA, the apps and every node, each node waited for until ready.
        If any of it fails, what did start is stopped before the error goes
        on: a caller that never got a started mesh has nothing to stop."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.write_config()
        state = self.tmp / "ca-state"
        port_file = self.tmp / "ca.port"
        # With the API: pods from it, and node proxies authenticated by token.
        source = (["--kubeconfig", self.kubeconfig, "--root-configmap", ROOT_CONFIGMAP]
                  if self.api else ["--config", str(self.config)])
        self.ca = Proc("controlplane", [*SHOAL, "controlplane", "run", "--port", "0",
                                        "--host", "127.0.0.1", "--state-dir", str(state),
                                        *source, "--port-file", str(port_file)], self.logs, cwd=ROOT)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists():
            if self.ca.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"control plane did not start:\n{self.ca.tail()}")
            time.sleep(0.05)
        self.ca_port = int(port_file.read_text())
        self.ca_state = state
        for n in self.nodes.values():
            if self.api:
                self.node_token(n.name)
            else:
                self.issue_credential(["--node", n.name], n.cred)
        for p in self.pods.values():
            if p.port:
                self.apps[p.name] = python_app(p.name, f"{p.ip}:{p.port}", self.logs)
        for n in self.nodes.values():
            self.start_node(n.name)
        for n in self.nodes.values():
            self.wait_ready(n.name)

    def node_token(self, node: str) -> None:
        """As the kubelet would: the node's ztunnel pod, and its projected token
        (bound to that pod, audience istio-ca) that the TokenReview accepts."""
        ns, sa = NODE_ACCOUNT
        pod = f"{sa}-{node}"
        self.api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": ns},
                        "spec": {"nodeName": node, "serviceAccountName": sa},
                        "status": {"phase": "Running"}})
        token = f"token-{node}-{random.getrandbits(64):x}"
        self.api.add_token(token, username=f"system:serviceaccount:{ns}:{sa}",
                           audiences=["istio-ca"], pod=(ns, pod))
        n = self.nodes[node]
        n.cred.mkdir(parents=True, exist_ok=True)
        (n.cred / "token").write_text(token)
        cm_ns, cm_name = ROOT_CONFIGMAP.split("/")
        (n.cred / "root-cert.pem").write_text(
            self.api.get("configmaps", cm_ns, cm_name)["data"]["root-cert.pem"])

    def issue_credential(self, who: list[str], out: Path) -> None:
        import subprocess
        subprocess.run([*SHOAL, "controlplane", "issue-node-cert", "--state-dir",
                        str(self.ca_state), *who, "--out", str(out)], check=True, cwd=ROOT,
                       capture_output=True, timeout=30)

    def start_node(self, name: str) -> None:
        n = self.nodes[name]
        source = ["--kubeconfig", self.kubeconfig] if self.api else ["--config", str(self.config)]
        cmd = [*SHOAL, "ztunnel", "run", "--node", n.name, *source,
               "--ca-address", f"127.0.0.1:{self.ca_port}",
               *(["--ca-token", str(n.cred / "token"), "--ca-root-cert", str(n.cred / "root-cert.pem")]
                 if self.api else ["--ca-credential", str(n.cred)]),
               "--bind", n.proxy_ip, "--hbone-port", str(self.hbone_port),
               "--outbound-port", str(free_port()), "--inbound-port", str(free_port()),
               "--admin-port", str(n.admin), "--metrics-port", str(n.metrics),
               "--readiness-port", str(n.readiness), "--workers", str(self.workers),
               "--drain-timeout", "1"]
        for (ip, port), lport in n.fixed.items():
            cmd += ["--test-fixed-target", f"outbound:{lport}={ip}:{port}"]
        cmd += self.extra_args
        n.proc = Proc(f"ztunnel-{n.name}", cmd, self.logs, cwd=ROOT)

    def wait_ready(self, name: str, timeout: float = START_TIMEOUT) -> None:
        """Until /healthz/ready answers 200 and the supervisor announced that
        every worker is ready: the readiness port is served by whichever worker
        is up, and on a loaded machine the others may still be booting."""
        n = self.nodes[name]
        url = f"http://127.0.0.1:{n.readiness}/healthz/ready"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if n.proc.p.poll() is not None:
                raise RuntimeError(f"ztunnel {name} exited:\n{n.proc.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200 and SUPERVISOR_READY in n.proc.log_path.read_bytes():
                        return
                    last = "not every worker is ready yet"
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise TimeoutError(f"ztunnel {name} not ready ({last}):\n{n.proc.tail()}")

    def stop(self) -> None:
        for n in self.nodes.values():
            if n.proc:
                n.proc.stop()
        for p in self.apps.values():
            p.stop()
        if self.ca:
            self.ca.stop()

    def supervisor_pid(self, node: str) -> int:
        """The pid of the node's ztunnel supervisor (the mesh is started)."""
        proc = self.nodes[node].proc
        assert proc is not None, f"{node} is not started"
        return proc.pid

    def worker_pids(self, node: str) -> set[int]:
        """The node's ztunnel workers: the processes holding its admin
        listener that have no child holding it (supervisors hold copies of
        the slots' listeners; after SIGUSR2 two supervisors do)."""
        import re
        import subprocess
        out = subprocess.run(["ss", "-ltnpH", f"( sport = :{self.nodes[node].admin} )"],
                             capture_output=True, text=True).stdout
        holders = {int(p) for p in re.findall(r"pid=(\d+)", out)}
        parents = set()
        for pid in holders:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                parents.add(int(stat.rsplit(")", 1)[1].split()[1]))
            except OSError:
                pass
        return holders - parents

    # -- clients ---------------------------------------------------------------
    def connect(self, client: str, ip: str, port: int, timeout: float = 10) -> socket.socket:
        """A TCP connection from pod `client` to ip:port, through its ztunnel."""
        pod = self.pods[client]
        n = self.nodes[pod.node]
        lport = n.fixed[(ip, port)]
        s = socket.socket()
        s.settimeout(timeout)
        s.bind((pod.ip, 0))
        with on_cpu(next_cpu()):    # as clients on every CPU: steering reaches each worker
            s.connect((n.proxy_ip, lport))
        return s

    def curl_args(self, client: str, ip: str, port: int) -> list[str]:
        pod = self.pods[client]
        n = self.nodes[pod.node]
        return ["curl", "-sS", "--max-time", "10", "--interface", pod.ip,
                f"http://{n.proxy_ip}:{n.fixed[(ip, port)]}/"]

    def metrics(self, node: str) -> str:
        url = f"http://127.0.0.1:{self.nodes[node].metrics}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()

    def config_dump(self, node: str) -> dict:
        import orjson
        url = f"http://127.0.0.1:{self.nodes[node].admin}/config_dump"
        with urllib.request.urlopen(url, timeout=5) as r:
            return orjson.loads(r.read())


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus series whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        body, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in body for k, v in labels.items()):
            total += float(value)
    return total


def echo(mesh: Mesh, client: str, dst: tuple[str, int], payload: bytes = b"ping",
         timeout: float = 10) -> bytes:
    """Send `payload` from pod `client` to dst, half-close, read the reply to EOF."""
    with mesh.connect(client, *dst, timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def echo_exact(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` and read back exactly as many bytes: TCP may deliver the
    echo in pieces, so one recv() is not enough."""
    sock.sendall(data)
    got = bytearray()
    while len(got) < len(data):
        chunk = sock.recv(len(data) - len(got))
        assert chunk, "tunnel closed while echoing"
        got += chunk
    return bytes(got)
