"""`shoal mesh`: a multi-node cluster on network namespaces, on one machine.

The mesh plays the parts Kubernetes would: scheduler and IPAM bookkeeping
(`cni.mesh.plan`), container runtime (a netns per pod, wired by the CNI
chain, its containers' commands run inside it), and the node DaemonSets
(`shoal node-agent run` and `shoal ztunnel run --mode inpod` per node, in the
node's netns) plus the control plane (`shoal controlplane run` in its own
netns). All state lives under the run dir (`state.json`), written after
every step, so `down` can undo a half-finished `up`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import yaml

from shoal.cni import chain, conflist
from shoal.cni.mesh import net, plan, procs
from shoal.cni.mesh.net import MeshError
from shoal.cni.mesh.procs import ProcRecord
from shoal.shards import standby
from shoal.core.constants import (CA_PORT, DATAPLANE_NONE, LABEL_DATAPLANE_MODE,
                            WAYPOINT_GATEWAY_CLASS)

# How long `up` waits for each node's ztunnel to connect to its node agent.
# A ztunnel needs its certificate and config first; on 2 cores a cold Python
# start with a few workers takes a few seconds.
ZTUNNEL_READY_TIMEOUT_S = 40.0
# The control plane and node agents bind their sockets within a second or two.
COMPONENT_READY_TIMEOUT_S = 20.0
DEFAULT_RUN_DIR = "/run/shoal/mesh"
# A new waypoint replica enters the waypoint's endpoints only once its
# /healthz/ready answers (Kubernetes adds a pod to EndpointSlices when its
# readiness probe passes): a cold start plus the CA round trip takes seconds.
WAYPOINT_READY_TIMEOUT_S = 30.0
WAYPOINT_READY_PORT = 15021
# A departing waypoint replica leaves the endpoints first and is stopped
# this long after: the time for every ztunnel to see the new config (inotify
# plus a compile, tens of ms) with a wide margin for a loaded 2-core machine.
# Kubernetes has the same race between endpoint removal and SIGTERM, which
# users close with a preStop sleep; this is that sleep.
WAYPOINT_ENDPOINT_GRACE_S = 1.5
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107
# Where Debian's standard CNI plugins are; each node's own bin dir (where its
# `shoal cni install` copies shoal-cni) follows on its CNI_PATH.
STANDARD_CNI_DIR = "/usr/lib/cni"

Progress = Callable[[str], None]


def _exclusive(method):
    """Hold the run dir's state lock for the whole command: the kubelet
    (cni/mesh/kubelet.py) skips its passes meanwhile, so it never restarts
    what the command is stopping, nor writes the state under it."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.locked():
            return method(self, *args, **kwargs)
    return wrapper


def shoal_argv() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "shoal")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "shoal.cli"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshOptions:
    run_dir: str = DEFAULT_RUN_DIR
    mesh_id: str = "shoal"
    base: int = 244
    nodes: int = 2
    ztunnel: bool = True
    ztunnel_workers: int = 1
    kubeconfig: str = ""        # publish to this API server; ztunnels read only it

    def __post_init__(self) -> None:
        if not (self.mesh_id.isalnum() and len(self.mesh_id) <= 8):
            raise MeshError("--id must be 1-8 letters/digits (it prefixes link names, max 15 chars)")
        if not 1 <= self.base <= 254:
            raise MeshError("--cidr-base must be 1..254 (the mesh uses 10.BASE.0.0/16)")


class Mesh:
    def __init__(self, run_dir: str = DEFAULT_RUN_DIR) -> None:
        self.run_dir = run_dir
        self.state_path = os.path.join(run_dir, "state.json")
        self.state: dict = {}

    # ------------------------------------------------------------ state + paths

    def load(self) -> bool:
        try:
            with open(self.state_path, "rb") as f:
                self.state = orjson.loads(f.read())
            return True
        except FileNotFoundError:
            return False

    def save(self) -> None:
        tmp = self.state_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(self.state, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.state_path)

    def p(self, *parts: str) -> str:
        return os.path.join(self.run_dir, *parts)

    @property
    def mid(self) -> str:
        return self.state["id"]

    @property
    def base(self) -> int:
        return self.state["base"]

    def node_dir(self, node: str) -> str:
        return self.p("nodes", node)

    def node_index(self, node: str) -> int:
        return int(node.rsplit("-", 1)[1])

    @contextlib.contextmanager
    def locked(self, blocking: bool = True):
        """The state lock (flock on run_dir/state.lock); yields whether it is held."""
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.p("state.lock"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _spawn(self, name: str, argv: list[str], log: str, *, env: dict[str, str] | None = None,
               **kw) -> ProcRecord:
        return procs.spawn(name, argv, log, env={**procs.bytecode_env(self.run_dir), **(env or {})},
                           **kw)

    def _record(self, rec: ProcRecord) -> None:
        self.state.setdefault("procs", {})[rec.name] = rec.to_json()
        self.save()

    # ------------------------------------------------------------ up

    @_exclusive
    def up(self, sources: list[str], opts: MeshOptions, progress: Progress) -> None:
        if self.load():
            raise MeshError(f"a mesh is already up in {self.run_dir} (`shoal mesh down` first)")
        longest = os.path.join(os.path.abspath(self.node_dir(plan.node_name(opts.nodes))),
                               "cni", "pluginevent.sock")
        if len(longest.encode()) > UNIX_PATH_MAX:
            raise MeshError(f"--run-dir {self.run_dir!r} is too long: socket paths under it "
                            f"exceed {UNIX_PATH_MAX} bytes (AF_UNIX limit); use a shorter one")
        docs = load_docs(sources)
        os.makedirs(self.run_dir, exist_ok=True)
        self.state = {"id": opts.mesh_id, "base": opts.base, "nodes": opts.nodes,
                      "ztunnel": opts.ztunnel, "ztunnel_workers": opts.ztunnel_workers,
                      "kubeconfig": os.path.abspath(opts.kubeconfig) if opts.kubeconfig else "",
                      "published": [],
                      "docs": docs, "vips": {}, "pods": {}, "procs": {}, "placement": {}}
        pods = self._plan(docs)
        self.save()
        progress("network: host bridge, control plane and node namespaces")
        net.create_fabric(opts.mesh_id, opts.base, opts.nodes)
        self._write_conflists()
        self._write_config(pods)
        progress("control plane (CA on 15012)")
        self._start_controlplane()
        for i in range(1, opts.nodes + 1):
            progress(f"node-{i}: node agent" + (" and ztunnel" if opts.ztunnel else ""))
            self._start_node(plan.node_name(i))
        if opts.ztunnel:
            for i in range(1, opts.nodes + 1):
                self._wait_ztunnel(plan.node_name(i))
        self._reconcile_pods(pods, progress)
        progress("kubelet: restarts dead components")
        self._start_kubelet()

    def _start_kubelet(self) -> None:
        rec = self._spawn("kubelet", [*shoal_argv(), "mesh", "kubelet", "--run-dir", self.run_dir],
                          self.p("logs", "kubelet.log"))
        self.state["kubelet_proc"] = rec.to_json()
        self.save()

    def _plan(self, docs: list[dict]) -> list[plan.PodPlan]:
        """Place pods (each replica on its own), allocate VIPs; validate.

        Updates state["docs"], placement and vips.
        """
        self.state["docs"] = docs
        pods = plan.place(plan.pods_of(docs, shoal=shoal_argv()[0]), self.state["nodes"],
                          self.state.get("placement", {}))
        self.state["placement"] = {p.key: p.node for p in pods}
        alloc = plan.VipAllocator(self.base, self.state.get("vips"))
        for ns, name, fixed in plan.services_of(docs):
            if fixed:
                alloc.by_key[f"{ns}/{name}"] = fixed
            else:
                alloc.get(f"{ns}/{name}")
        self.state["vips"] = alloc.by_key
        validate(plan.config_docs(docs, pods, alloc.by_key, {}))
        return pods

    def conf_dir(self, node: str) -> str:
        """The node's CNI config dir (its /etc/cni/net.d)."""
        return self.p("net.d", node)

    def cni_path(self, node: str) -> str:
        return f"{STANDARD_CNI_DIR}:{os.path.join(self.node_dir(node), 'bin')}"

    def _write_conflists(self) -> None:
        """Each node's primary network, bridge + host-local, as a cluster's CNI
        would leave it; the node's `shoal cni install` chains shoal-cni in."""
        for i in range(1, self.state["nodes"] + 1):
            node = plan.node_name(i)
            os.makedirs(self.conf_dir(node), exist_ok=True)
            conf = chain.conflist(f"{self.mid}-{node}", bridge="cni0", shoal=False,
                                  subnet=plan.pod_subnet(self.base, i),
                                  gateway=plan.pod_gateway(self.base, i),
                                  ipam_dir=self.p("ipam", node),
                                  agent_run_dir=os.path.join(self.node_dir(node), "cni"))
            with open(os.path.join(self.conf_dir(node), "10-bridge.conflist"), "wb") as f:
                f.write(orjson.dumps(conf, option=orjson.OPT_INDENT_2))

    def conflist(self, node: str) -> dict:
        """The network config the runtime would use on the node (its primary file)."""
        d = self.conf_dir(node)
        files = {}
        for n in conflist.candidates(os.listdir(d)):
            with open(os.path.join(d, n), "rb") as f:
                files[n] = f.read()
        name, errors = conflist.primary(files)
        if name is None:
            raise MeshError(f"no usable CNI config in {d}: {'; '.join(errors) or 'empty'}")
        return conflist.parse(name, files[name])

    def _pod_ips(self) -> dict[str, str]:
        return {k: v["ip"] for k, v in self.state["pods"].items() if v.get("ip")}

    def _write_config(self, pods: list[plan.PodPlan]) -> None:
        """The proxies' config dir: one file, replaced atomically (hidden temp)."""
        docs = plan.config_docs(self.state["docs"], pods, self.state["vips"], self._pod_ips())
        os.makedirs(self.p("config"), exist_ok=True)
        tmp = self.p("config", ".mesh.yaml.tmp")
        with open(tmp, "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
        os.replace(tmp, self.p("config", "mesh.yaml"))
        if self.state.get("kubeconfig"):
            from shoal.cni.mesh.kubeapi import Publisher
            self.state["published"] = Publisher(self.state["kubeconfig"]).sync(
                docs, self.state.get("published", []))

    def _start_controlplane(self) -> None:
        sh = shoal_argv()
        ca = self.p("ca")
        for i in range(1, self.state["nodes"] + 1):
            node = plan.node_name(i)
            _run([*sh, "controlplane", "issue-node-cert", "--state-dir", ca, "--node", node,
                  "--out", os.path.join(self.node_dir(node), "cred")])
        port_file = self.p("ca", "port")
        rec = self._spawn("controlplane", [*sh, "controlplane", "run", "--state-dir", ca,
                                           "--config", self.p("config"), "--port", str(CA_PORT),
                                           "--port-file", port_file],
                          self.p("logs", "controlplane.log"), netns=net.cp_netns(self.mid))
        self._record(rec)
        _wait(lambda: os.path.exists(port_file), rec, "control plane", COMPONENT_READY_TIMEOUT_S)

    def _start_node(self, node: str) -> None:
        sh = shoal_argv()
        d = self.node_dir(node)
        sock = os.path.join(d, "cni", "pluginevent.sock")
        agent = [*sh, "node-agent", "run", "--node", node, "--config", self.p("config"),
                 "--socket", sock, "--zds-socket", os.path.join(d, "ztunnel.sock"),
                 "--state-file", os.path.join(d, "cni", "state.json")]
        if not self.state["ztunnel"]:
            agent.append("--no-require-ztunnel")
        ns = net.node_netns(self.mid, self.node_index(node))
        rec = self._spawn(f"node-agent/{node}", agent, self.p("logs", f"node-agent-{node}.log"), netns=ns)
        self._record(rec)
        _wait(lambda: os.path.exists(sock), rec, f"node agent on {node}", COMPONENT_READY_TIMEOUT_S)
        # The same installer as on a cluster node: binary into the node's bin
        # dir, chained into its config once the agent's snapshot exists.
        inst = self._spawn(f"cni-install/{node}",
                           [*sh, "cni", "install", "--cni-bin-dir", os.path.join(d, "bin"),
                            "--cni-conf-dir", self.conf_dir(node),
                            "--agent-run-dir", os.path.join(d, "cni")],
                           self.p("logs", f"cni-install-{node}.log"))
        self._record(inst)
        _wait(lambda: os.path.exists(os.path.join(d, "cni", "chain-ready")), inst,
              f"shoal-cni install on {node}", COMPONENT_READY_TIMEOUT_S)
        if not self.state["ztunnel"]:
            return
        zt = [*sh, "ztunnel", "run", "--node", node, "--mode", "inpod",
              "--ca-address", f"{plan.controlplane_ip(self.base)}:{CA_PORT}",
              "--ca-credential", os.path.join(d, "cred"),
              "--zds-socket", os.path.join(d, "ztunnel.sock"),
              *(["--kubeconfig", self.state["kubeconfig"]] if self.state.get("kubeconfig")
                else ["--config", self.p("config")]),
              "--workers", str(self.state["ztunnel_workers"])]
        pidfile = os.path.join(d, "ztunnel.pid")   # follows a SIGUSR2 upgrade
        zt += ["--pidfile", pidfile]
        self._record(self._spawn(f"ztunnel/{node}", zt, self.p("logs", f"ztunnel-{node}.log"),
                                 netns=ns, pidfile=pidfile))

    def agent_state(self, node: str) -> dict:
        try:
            with open(os.path.join(self.node_dir(node), "cni", "state.json"), "rb") as f:
                return orjson.loads(f.read())
        except (OSError, ValueError):
            return {}

    def _wait_ztunnel(self, node: str) -> None:
        rec = ProcRecord.from_json(self.state["procs"][f"ztunnel/{node}"])
        try:
            _wait(lambda: self.agent_state(node).get("ztunnels", 0) > 0, rec,
                  f"ztunnel on {node}", ZTUNNEL_READY_TIMEOUT_S)
        except MeshError as e:
            raise MeshError(f"{e}\nThe ztunnel did not connect to the node agent, so pods in "
                            "ambient namespaces cannot start captured. Run `shoal mesh down`; "
                            "`shoal mesh up --no-ztunnel` builds the network and pods without "
                            "the data plane (captured connections are then refused).") from None

    # ------------------------------------------------------------ pods

    def _reconcile_pods(self, pods: list[plan.PodPlan], progress: Progress) -> None:
        want = {p.key: p for p in pods}
        gone = [k for k in self.state["pods"] if k not in want]
        leaving = [self._terminating(k) for k in gone
                   if self.state["pods"][k].get("owner", "").startswith("Gateway/")]
        if leaving:
            # Out of the waypoint's endpoints before SIGTERM, so no ztunnel
            # opens a new connection to a replica that is draining.
            self._write_config([p for p in pods if p.key in self.state["pods"]] + leaving)
            time.sleep(WAYPOINT_ENDPOINT_GRACE_S)
        for key in gone:
            progress(f"pod {key}: removing")
            self._delete_pod(key)
        services = [(ns, name) for ns, name, _ in plan.services_of(self.state["docs"])]
        # The node agents decide enrollment from this config: new pods'
        # labels (e.g. a waypoint's dataplane-mode none) must be in first.
        self._write_config(pods)
        new = [p for p in pods if p.key not in self.state["pods"]]
        for p in new:
            progress(f"pod {p.key} on {p.node}")
            self._create_pod(p, services)
        for p in new:
            if p.owner.startswith("Gateway/"):
                self._wait_waypoint_ready(p)
        self._write_config(pods)
        for p in pods:       # VIPs of services added later, own IP
            rec = self.state["pods"][p.key]
            net.write_pod_etc(rec["netns"], plan.hosts_file(p, rec.get("ip", ""), services,
                                                            self.state["vips"]),
                              plan.resolv_conf(p.namespace))
        self.save()

    def _create_pod(self, p: plan.PodPlan, services: list[tuple[str, str]]) -> None:
        ns = net.pod_netns(self.mid, p.namespace, p.name)
        rec: dict[str, Any] = {"namespace": p.namespace, "name": p.name, "node": p.node, "netns": ns,
               "container_id": uuid.uuid4().hex, "ip": "", "result": None, "procs": [],
               "owner": p.owner, "service_account": p.service_account}
        self.state["pods"][p.key] = rec
        self.save()
        net.sh("ip", "netns", "add", ns)
        # What the runtime's `loopback` plugin does for every sandbox.
        net.sh("ip", "-n", ns, "link", "set", "lo", "up")
        net.write_pod_etc(ns, plan.hosts_file(p, "", services, self.state["vips"]),
                          plan.resolv_conf(p.namespace))
        att = self._attachment(rec)
        host = net.netns_path(net.node_netns(self.mid, self.node_index(p.node)))
        try:
            result = chain.add(self.conflist(p.node), att, self.cni_path(p.node), host_netns=host)
        except chain.ChainError as e:
            raise MeshError(f"pod {p.key}: {e}") from None
        rec["result"] = result
        rec["ip"] = chain_ip(result)
        self.save()
        net.write_pod_etc(ns, plan.hosts_file(p, rec["ip"], services, self.state["vips"]),
                          plan.resolv_conf(p.namespace))
        for c in p.containers:
            argv = [self._expand(a) for a in c.argv]
            env = {"POD_NAME": p.name, "POD_NAMESPACE": p.namespace, "POD_IP": rec["ip"],
                   "NODE_NAME": p.node, "SERVICE_ACCOUNT": p.service_account, **c.env}
            if p.owner.startswith("Gateway/"):
                self._waypoint_cred(p)
            r = self._spawn(f"{p.key}/{c.name}", argv,
                            self.p("logs", f"{p.namespace}_{p.name}_{c.name}.log"),
                            netns=ns, cwd=c.cwd or None, env=env)
            rec["procs"].append(r.to_json())
            self.save()

    def _terminating(self, key: str) -> plan.PodPlan:
        """A departing waypoint replica as Kubernetes shows a terminating pod:
        still there (its `dataplane-mode: none` keeps the node agent from
        enrolling it by its namespace's label), but no longer selected by the
        waypoint's Service (the gateway-name label is what selects)."""
        rec = self.state["pods"][key]
        return plan.PodPlan(namespace=rec["namespace"], name=rec["name"],
                            labels={LABEL_DATAPLANE_MODE: DATAPLANE_NONE},
                            service_account=rec["service_account"], containers=(),
                            spec={"serviceAccountName": rec["service_account"],
                                  "containers": [{"name": "waypoint"}]},
                            owner=rec["owner"], node=rec["node"])

    def _wait_waypoint_ready(self, p: plan.PodPlan) -> None:
        """Wait for a waypoint replica's readiness endpoint (inside its netns)."""
        rec = self.state["pods"][p.key]
        proc = ProcRecord.from_json(rec["procs"][0])
        url = f"http://127.0.0.1:{WAYPOINT_READY_PORT}/healthz/ready"

        def ready() -> bool:
            r = subprocess.run(["ip", "netns", "exec", rec["netns"], "curl", "-sf", "-o", "/dev/null",
                                "-m", "1", url], capture_output=True, timeout=5)
            return r.returncode == 0
        _wait(ready, proc, f"waypoint replica {p.key}", WAYPOINT_READY_TIMEOUT_S)

    def _expand(self, arg: str) -> str:
        if arg == "{config_dir}":
            return self.p("config")
        if arg == "{ca_address}":
            return f"{plan.controlplane_ip(self.base)}:{CA_PORT}"
        if arg.startswith("{waypoint_cred:"):
            return self.p("waypoints", arg[len("{waypoint_cred:"):-1].replace("/", "_"), "cred")
        return arg

    def _waypoint_cred(self, p: plan.PodPlan) -> None:
        gw = f"{p.namespace}/{p.owner.split('/', 1)[1]}"
        out = self.p("waypoints", gw.replace("/", "_"), "cred")
        if not os.path.exists(os.path.join(out, "key.pem")):
            _run([*shoal_argv(), "controlplane", "issue-node-cert", "--state-dir", self.p("ca"),
                  "--waypoint", gw, "--out", out])

    def _attachment(self, rec: dict) -> chain.Attachment:
        return chain.Attachment(container_id=rec["container_id"], netns=net.netns_path(rec["netns"]),
                                args={"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": rec["namespace"],
                                      "K8S_POD_NAME": rec["name"],
                                      "K8S_POD_INFRA_CONTAINER_ID": rec["container_id"]})

    def _delete_pod(self, key: str) -> list[str]:
        rec = self.state["pods"][key]
        procs.stop([ProcRecord.from_json(r) for r in rec.get("procs", [])])
        errors = []
        node_ns = net.node_netns(self.mid, self.node_index(rec["node"]))
        if net.exists(node_ns) and os.path.isdir(self.conf_dir(rec["node"])):
            errors += [str(e) for e in chain.delete(self.conflist(rec["node"]), self._attachment(rec),
                                                    self.cni_path(rec["node"]), rec.get("result"),
                                                    host_netns=net.netns_path(node_ns))]
        if net.exists(rec["netns"]):
            try:
                net.sh("ip", "netns", "del", rec["netns"])
            except MeshError as e:
                errors.append(str(e))
        net.remove_pod_etc(rec["netns"])
        del self.state["pods"][key]
        self.save()
        return errors

    # ------------------------------------------------------------ apply / down

    @_exclusive
    def apply(self, sources: list[str], progress: Progress) -> None:
        if not self.load():
            raise MeshError(f"no mesh in {self.run_dir} (`shoal mesh up` first)")
        merged = {plan.doc_key(d): d for d in self.state["docs"]}
        for d in load_docs(sources):
            merged[plan.doc_key(d)] = d
        self._apply_docs(list(merged.values()), progress)

    @_exclusive
    def delete(self, sources: list[str], progress: Progress) -> list[str]:
        """Remove the resources of `sources` (by kind/namespace/name, as
        `kubectl delete -f`); returns the ones the mesh did not have."""
        if not self.load():
            raise MeshError(f"no mesh in {self.run_dir} (`shoal mesh up` first)")
        gone = {plan.doc_key(d) for d in load_docs(sources)}
        kept = [d for d in self.state["docs"] if plan.doc_key(d) not in gone]
        had = {plan.doc_key(d) for d in self.state["docs"]}
        self._apply_docs(kept, progress)
        return ["/".join(k[1:]) for k in sorted(gone - had)]

    @_exclusive
    def scale(self, ref: str, replicas: int, progress: Progress) -> None:
        """Set a Deployment's replica count (like `kubectl scale`)."""
        if not self.load():
            raise MeshError(f"no mesh in {self.run_dir} (`shoal mesh up` first)")
        if not 0 <= replicas <= 100:
            raise MeshError("--replicas must be 0..100 on a local mesh")
        ns, _, name = ref.rpartition("/")
        key = ("apps", "Deployment", ns or "default", name)
        docs = [dict(d) for d in self.state["docs"]]
        for d in docs:
            if plan.doc_key(d) == key:
                d["spec"] = {**d.get("spec", {}), "replicas": replicas}
                break
        else:
            raise MeshError(f"no Deployment {ns or 'default'}/{name} in the mesh")
        self._apply_docs(docs, progress)

    @_exclusive
    def scale_waypoint(self, ref: str, replicas: int, progress: Progress) -> None:
        """Set a waypoint's replica count; the others keep serving throughout."""
        if not self.load():
            raise MeshError(f"no mesh in {self.run_dir} (`shoal mesh up` first)")
        if not 0 <= replicas <= plan.MAX_WAYPOINT_REPLICAS:
            raise MeshError(f"the replica count must be 0..{plan.MAX_WAYPOINT_REPLICAS} on a local mesh")
        ns, _, name = ref.rpartition("/")
        key = ("gateway.networking.k8s.io", "Gateway", ns or "default", name)
        docs = [dict(d) for d in self.state["docs"]]
        for i, d in enumerate(docs):
            if plan.doc_key(d) == key and \
                    (d.get("spec") or {}).get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS:
                meta = {**d.get("metadata", {})}
                meta["annotations"] = {**(meta.get("annotations") or {}),
                                       plan.ANNOTATION_WAYPOINT_REPLICAS: str(replicas)}
                docs[i] = {**d, "metadata": meta}
                break
        else:
            raise MeshError(f"no waypoint (Gateway of class istio-waypoint) {ns or 'default'}/{name} "
                            "in the mesh")
        self._apply_docs(docs, progress)

    def _apply_docs(self, docs: list[dict], progress: Progress) -> None:
        old = (self.state["docs"], dict(self.state["vips"]), dict(self.state["placement"]))
        try:
            pods = self._plan(docs)
        except (MeshError, plan.PlanError):
            self.state["docs"], self.state["vips"], self.state["placement"] = old
            raise
        self.save()
        self._reconcile_pods(pods, progress)

    @_exclusive
    def down(self, progress: Progress) -> list[str]:
        """Remove everything `up` made; returns the problems met (best effort)."""
        if not self.load():
            return []
        errors: list[str] = []
        if self.state.get("kubelet_proc"):
            progress("stopping the kubelet")
            procs.stop([ProcRecord.from_json(self.state["kubelet_proc"])])
        # The kubelet's standbys (loaded ztunnels waiting to take over).
        procs.stop([ProcRecord.from_json(r) for r in self.state.get("standby", {}).values()])
        for key in list(self.state.get("pods", {})):
            progress(f"pod {key}: removing")
            errors += self._delete_pod(key)
        progress("stopping ztunnels, node agents and the control plane")
        recs = [ProcRecord.from_json(r) for r in self.state.get("procs", {}).values()]
        procs.stop([r for r in recs if r.name.startswith("ztunnel/")])
        procs.stop([r for r in recs if not r.name.startswith("ztunnel/")])
        progress("network")
        errors += net.destroy_fabric(self.mid, self.state["nodes"])
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return errors

    # ------------------------------------------------------------ status / exec

    def find_pod(self, ref: str) -> dict:
        ns, _, name = ref.rpartition("/")
        ns = ns or "default"
        pods = self.state.get("pods", {})
        if f"{ns}/{name}" in pods:
            return pods[f"{ns}/{name}"]
        replicas = sorted(k for k, v in pods.items()
                          if v["namespace"] == ns and v.get("owner") in (f"Deployment/{name}",
                                                                         f"Gateway/{name}"))
        if replicas:
            return pods[replicas[0]]
        raise MeshError(f"no pod or Deployment {ns}/{name} in the mesh "
                        f"(pods: {', '.join(sorted(pods)) or 'none'})")

    def exec(self, ref: str, argv: list[str]) -> int:
        if not self.load():
            raise MeshError(f"no mesh in {self.run_dir}")
        pod = self.find_pod(ref)
        return subprocess.call(["ip", "netns", "exec", pod["netns"], *argv])

    def status(self) -> dict:
        if not self.load():
            raise MeshError(f"no mesh in {self.run_dir}")
        enrolled = {}
        for i in range(1, self.state["nodes"] + 1):
            st = self.agent_state(plan.node_name(i))
            for p in st.get("pods", []):
                enrolled[f"{p['namespace']}/{p['name']}"] = p["enrolled"]
        comps = {n: procs.running(ProcRecord.from_json(r)) for n, r in self.state["procs"].items()}
        restarts = {n: st.get("restarts", 0) for n, st in self.state.get("kubelet", {}).items()}
        kubelet = self.state.get("kubelet_proc")
        pods = [{"pod": k, "node": v["node"], "ip": v.get("ip", ""),
                 "enrolled": enrolled.get(k, False),
                 "identity": f"spiffe://cluster.local/ns/{v['namespace']}/sa/{v['service_account']}",
                 "running": all(procs.running(ProcRecord.from_json(r)) for r in v.get("procs", [])),
                 "restarts": sum(restarts.get(r["name"], 0) for r in v.get("procs", []))}
                for k, v in sorted(self.state["pods"].items())]
        return {"id": self.mid, "run_dir": self.run_dir, "nodes": [
                    {"node": plan.node_name(i), "ip": plan.node_ip(self.base, i),
                     "pod_cidr": plan.pod_subnet(self.base, i),
                     "ztunnels": self.agent_state(plan.node_name(i)).get("ztunnels", 0)}
                    for i in range(1, self.state["nodes"] + 1)],
                "components": comps, "restarts": {n: restarts.get(n, 0) for n in comps},
                # A loaded replacement waiting (cni/mesh/kubelet.py): its restart is fast.
                "standby": {n: procs.running(r) and standby.ready(r.pid) for n, r in
                            ((n, ProcRecord.from_json(raw))
                             for n, raw in self.state.get("standby", {}).items())},
                "kubelet": bool(kubelet and procs.running(ProcRecord.from_json(kubelet))),
                "services": self.state["vips"], "pods": pods}


# ---------------------------------------------------------------- helpers

def chain_ip(result: dict) -> str:
    for entry in result.get("ips", []):
        addr = entry.get("address", "")
        if addr and ":" not in addr:
            return addr.split("/", 1)[0]
    return ""


def load_docs(sources: list[str]) -> list[dict]:
    """Raw YAML documents of files/dirs, each remembering its directory
    (containers' relative paths start there)."""
    from shoal.core.model import yaml_files
    docs = []
    for src in sources:
        try:
            files = yaml_files(src)
        except FileNotFoundError as e:
            raise MeshError(str(e)) from None
        for f in files:
            try:
                items = [d for d in yaml.safe_load_all(f.read_text()) if d]
            except yaml.YAMLError as e:
                raise MeshError(f"{f}: invalid YAML: {e}") from None
            for d in items:
                if not isinstance(d, dict):
                    raise MeshError(f"{f}: a document must be a mapping")
                meta = d.setdefault("metadata", {})
                meta.setdefault("annotations", {})[plan.ANNOTATION_SOURCE_DIR] = str(f.parent.resolve())
                docs.append(d)
    return docs


def validate(docs: list[dict]) -> None:
    from shoal.core.model import ConfigError, load_text
    try:
        load_text(yaml.safe_dump_all(docs, sort_keys=False))
    except ConfigError as e:
        raise MeshError(f"the mesh config is invalid:\n{e}") from None


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise MeshError(f"{' '.join(argv[-6:])}: {r.stderr.strip() or r.stdout.strip()}")


def _wait(cond: Callable[[], bool], rec: ProcRecord, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if not procs.alive(rec):
            raise MeshError(f"{what} exited at start; last lines of {rec.log}:\n{procs.tail(rec.log)}")
        if time.monotonic() > deadline:
            raise MeshError(f"{what} not ready after {timeout:g} s; last lines of {rec.log}:\n"
                            f"{procs.tail(rec.log)}")
        time.sleep(0.05)
