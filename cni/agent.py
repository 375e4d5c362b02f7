"""The node agent (`shoal node-agent run`): enrolls pods on one node.

It serves the CNI plugin binary (`cni.protocol` on a unix stream socket;
the CNI semantics are `cni.plugin`), decides enrollment from the mesh config
(`cni.enroll`), installs or removes the pod's capture rules (`cni.redirect`),
and hands enrolled pods' netns to the ztunnel(s) over ZDS (`cni.zds_server`).
Its memory is a small JSON state file so a restarted agent knows which pods
it captured. Next to its socket it keeps the enrollment snapshot the plugin
reads while the agent is down, and it replays the ADDs the plugin journalled
meanwhile (`pending/`), so a pod started then is captured once it is back.

Invariants:
- An ADD is confirmed only when the pod is captured: rules installed and,
  with `require_ztunnel`, ztunnel acked the netns. Otherwise the ADD fails
  and the runtime retries; a pod never starts uncaptured.
- On enrollment ztunnel is told first (its listeners exist before any
  packet is redirected); on release the rules go first (new connections go
  direct at once), then ztunnel drains.
- Every pod operation runs under one lock, so plugin requests, config
  changes and reconciliation never interleave on a pod.
- Apps never restart: enrollment changes only touch rules and ztunnel.
- kube-system and `exclude_namespaces` (shoal's own) are never captured.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
import os
import signal
from dataclasses import asdict, dataclass, field, replace

import orjson

from shoal.cni import enroll, plugin, protocol, redirect
from shoal.cni.enroll import MeshView
from shoal.cni.plugin import OpResult, PodOp
from shoal.cni.spec import CniError, ErrorCode, encode_error
from shoal.core.zds import WorkloadInfo, ZdsError
from shoal.cni.zds_server import NoZtunnel, PodEntry, ZdsServer
from shoal.core import log
from shoal.routing.kube import SCHEME as KUBERNETES_SCHEME

# How often the agent looks for config changes and vanished pods. A label
# added to a namespace takes effect within this delay (Istio reacts to
# informer events within ~1 s).
RECONCILE_INTERVAL_S = 0.5
# A plugin sends its request at once; a client that has not finished within
# this long is not a plugin.
REQUEST_TIMEOUT_S = 10.0
# Istio's defaults: the cluster's own pods and the mesh's own namespace.
DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "istio-system")


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRecord:
    container_id: str
    namespace: str
    name: str
    netns: str
    ifname: str = "eth0"
    ips: tuple[str, ...] = ()
    enrolled: bool = False
    service_account: str = "default"

    @property
    def uid(self) -> str:
        return enroll.workload_uid(self.namespace, self.name)

    def entry(self) -> PodEntry:
        return PodEntry(uid=self.uid, netns_path=self.netns,
                        info=WorkloadInfo(name=self.name, namespace=self.namespace,
                                          service_account=self.service_account))


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentOptions:
    node: str
    config_dir: str = ""
    socket_path: str = "/var/run/shoal-cni/" + protocol.SOCKET_NAME
    zds_path: str = "/var/run/ztunnel/ztunnel.sock"
    state_path: str = "/var/run/shoal-cni/state.json"
    require_ztunnel: bool = True
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED_NAMESPACES
    redirect: redirect.RedirectConfig = field(default_factory=redirect.RedirectConfig)

    @property
    def run_dir(self) -> str:
        return os.path.dirname(self.socket_path) or "."

    @property
    def excluded(self) -> frozenset[str]:
        return frozenset(self.exclude_namespaces) | plugin.ALWAYS_EXCLUDED


class ConfigWatcher:
    """Reloads the mesh config when a file under the directory changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sig: tuple | None = None
        self.view = MeshView()
        self.error = ""
        self._log = log.get("cni.agent")
        self._source: Any = None            # the KubeSource with --config kubernetes:
        # A view came from the source (the directory read, or the API synced):
        # before that, an empty view means "unknown", not "nothing ambient".
        self.loaded = not path

    def _signature(self) -> tuple:
        from shoal.core.model import yaml_files
        files = yaml_files(self.path)
        return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)

    def poll(self) -> bool:
        """Reload if changed; True when the view changed. Bad config keeps the last good."""
        if not self.path:
            return False
        if self.path.startswith(KUBERNETES_SCHEME):
            return self._poll_api()
        try:
            sig = self._signature()
        except OSError as e:
            self.error = str(e)
            return False
        if sig == self._sig:
            return False
        self._sig = sig
        from shoal.core.model import ConfigError, load_dir
        try:
            view = enroll.view_of(load_dir(self.path))
        except (ConfigError, OSError) as e:
            self.error = str(e)
            self._log.error("config refused; keeping the last good one",
                            extra={"fields": {"path": self.path, "error": str(e)}})
            return False
        self.error = ""
        changed = view != self.view
        self.view = view
        self.loaded = True
        return changed


    def _poll_api(self) -> bool:
        """`--config kubernetes:[KUBECONFIG]`: Namespaces and Pods from the API
        through the routing table's source (routing/kube), validated alike."""
        if self._source is None:
            from shoal.routing.kube.kinds import NAMESPACE, POD
            from shoal.routing.kube.source import KubeSource, parse_spec
            self._source = KubeSource(parse_spec(self.path), kinds=(NAMESPACE, POD)).start()
        if not self._source.wait(0) or not self._source.store.synced:
            return False
        cfg, _ = self._source.load()
        view = enroll.view_of(cfg)
        changed = view != self.view
        self.view = view
        self.loaded = True
        return changed


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class NodeAgent:
    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        self.pods: dict[str, PodRecord] = {}     # by container id
        self.config = ConfigWatcher(opts.config_dir)
        self.zds = ZdsServer(opts.zds_path, self._snapshot, on_change=self._save_state)
        self._lock = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._snapshot_bytes = b""
        self._socket_id: tuple[int, int] | None = None
        self._log = log.get("cni.agent")

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        os.makedirs(self.opts.run_dir, exist_ok=True)
        self.poll_config()
        self._load_state()
        await self.zds.start()
        await self.reconcile(repair=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.opts.socket_path)
        self._server = await asyncio.start_unix_server(self._on_client, path=self.opts.socket_path)
        os.chmod(self.opts.socket_path, 0o600)
        self._socket_id = _inode(self.opts.socket_path)
        self._tasks.append(asyncio.create_task(self._reconcile_loop()))
        self._log.info("node agent ready", extra={"fields": {
            "node": self.opts.node, "socket": self.opts.socket_path, "zds": self.opts.zds_path,
            "pods": len(self.pods)}})

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._server:
            self._server.close()
            # A newer agent (upgrade) may already serve the path: leave its socket.
            if _inode(self.opts.socket_path) == self._socket_id:
                os.unlink(self.opts.socket_path)
        await self.zds.close()

    async def run_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.close()

    # ---------------------------------------------------------------- state file

    def _load_state(self) -> None:
        try:
            with open(self.opts.state_path, "rb") as f:
                raw = orjson.loads(f.read())
            self.pods = {p["container_id"]: PodRecord(**{**p, "ips": tuple(p.get("ips", ()))})
                         for p in raw.get("pods", [])}
        except FileNotFoundError:
            self.pods = {}
        except (OSError, ValueError, TypeError, KeyError) as e:
            self._log.error("state file unreadable; starting empty",
                            extra={"fields": {"path": self.opts.state_path, "error": str(e)}})
            self.pods = {}

    def _save_state(self) -> None:
        os.makedirs(os.path.dirname(self.opts.state_path) or ".", exist_ok=True)
        tmp = self.opts.state_path + ".tmp"
        data = {"node": self.opts.node, "ztunnels": self.zds.ztunnels,
                "pods": [asdict(p) for p in self.pods.values()]}
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.opts.state_path)

    def _snapshot(self) -> list[PodEntry]:
        return [p.entry() for p in self.pods.values() if p.enrolled]

    def poll_config(self) -> bool:
        """Reload the mesh config if it changed; keep the plugin's snapshot current."""
        changed = self.config.poll()
        # Only a loaded view may replace the last snapshot (a restarting agent
        # must not tell the plugin "nothing is ambient" before it knows).
        if self.config.loaded and (changed or not self._snapshot_bytes):
            self._write_snapshot()
        return changed

    def _write_snapshot(self) -> None:
        data = enroll.snapshot(self.config.view, self.opts.excluded)
        if data == self._snapshot_bytes:
            return
        path = os.path.join(self.opts.run_dir, protocol.SNAPSHOT_NAME)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)      # the plugin reads a whole old or a whole new file
        self._snapshot_bytes = data

    def wants(self, namespace: str, name: str) -> bool:
        """Should this pod be captured now?"""
        return namespace not in self.opts.excluded and self.config.view.ambient(namespace, name)

    # ---------------------------------------------------------------- enrollment

    async def _enroll(self, pod: PodRecord) -> PodRecord:
        """Capture a pod. Raises (and leaves it uncaptured) on any failure."""
        try:
            await self.zds.add(pod.entry())
        except NoZtunnel:
            if self.opts.require_ztunnel:
                raise
            self._log.warning("no ztunnel connected; pod captured, handed over when one connects",
                              extra={"fields": {"pod": f"{pod.namespace}/{pod.name}"}})
        try:
            await asyncio.to_thread(redirect.install, pod.netns, self.opts.redirect)
        except Exception:
            await self.zds.delete(pod.uid)
            raise
        self._log.info("pod enrolled", extra={"fields": {"pod": f"{pod.namespace}/{pod.name}",
                                                         "ips": list(pod.ips)}})
        return replace(pod, enrolled=True)

    async def _release(self, pod: PodRecord) -> PodRecord:
        if os.path.exists(pod.netns):
            try:
                await asyncio.to_thread(redirect.remove, pod.netns, self.opts.redirect)
            except Exception as e:  # noqa: BLE001 - the netns may vanish mid-way
                self._log.warning("rule removal failed", extra={"fields": {
                    "pod": f"{pod.namespace}/{pod.name}", "error": str(e)}})
        await self.zds.delete(pod.uid)
        self._log.info("pod released", extra={"fields": {"pod": f"{pod.namespace}/{pod.name}"}})
        return replace(pod, enrolled=False)

    async def reconcile(self, *, repair: bool = False) -> None:
        """Make every known pod match the config; forget pods that are gone.

        `repair` re-applies the rules of enrolled pods too (after an agent
        restart, in case someone flushed a pod's table meanwhile).
        """
        async with self._lock:
            changed = False
            for cid, pod in list(self.pods.items()):
                if not os.path.exists(pod.netns):
                    if pod.enrolled:
                        await self.zds.delete(pod.uid)
                    del self.pods[cid]
                    changed = True
                    continue
                want = self.wants(pod.namespace, pod.name)
                try:
                    if want and not pod.enrolled:
                        self.pods[cid] = await self._enroll(pod)
                        changed = True
                    elif not want and pod.enrolled:
                        self.pods[cid] = await self._release(pod)
                        changed = True
                    elif want and repair:
                        await asyncio.to_thread(redirect.install, pod.netns, self.opts.redirect)
                except (OSError, ZdsError, redirect.RedirectError, asyncio.TimeoutError) as e:
                    self._log.warning("enrollment pending", extra={"fields": {
                        "pod": f"{pod.namespace}/{pod.name}", "error": str(e)}})
            if changed:
                self._save_state()

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL_S)
            try:
                self.poll_config()
                await self.replay_pending()
                await self.reconcile()
            except Exception as e:  # noqa: BLE001 - the loop must survive
                self._log.error("reconcile failed", extra={"fields": {"error": str(e)}})

    async def replay_pending(self) -> None:
        """ADDs the plugin passed through while we were down: handle them now,
        so a pod that should be captured is (its apps already run, as when a
        namespace is labelled later)."""
        d = os.path.join(self.opts.run_dir, protocol.PENDING_DIR)
        try:
            names = sorted(n for n in os.listdir(d) if not n.startswith("."))
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(d, name)
            try:
                with open(path, "rb") as f:
                    data = f.read(protocol.MAX_REQUEST_BYTES + 1)
                os.unlink(path)
                call = protocol.decode_call(data)
            except (OSError, protocol.ProtocolError) as e:
                self._log.warning("pending ADD unreadable; dropped",
                                  extra={"fields": {"path": path, "error": str(e)}})
                continue
            if not os.path.exists(call.env.get("CNI_NETNS", "")):
                continue          # the sandbox is already gone
            status, out = await plugin.serve(self.handle, call.env, call.stdin)
            self._log.info("pending ADD replayed", extra={"fields": {
                "container": call.env.get("CNI_CONTAINERID", ""), "status": status,
                **({"error": out.decode(errors="replace").strip()} if status else {})}})

    # ---------------------------------------------------------------- plugin requests

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                data = await self._read_request(reader)
            try:
                call = protocol.decode_call(data)
                status, out = await plugin.serve(self.handle, call.env, call.stdin)
            except protocol.ProtocolError as e:
                status, out = 1, encode_error(CniError(ErrorCode.DECODE_FAILURE,
                                                       "malformed plugin request", str(e)))
            writer.write(protocol.encode_answer(protocol.Answer(status=status, stdout=out)))
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> bytes:
        """Everything up to the plugin's EOF (it shuts its write side)."""
        data = bytearray()
        while chunk := await reader.read(65536):
            data += chunk
            if len(data) > protocol.MAX_REQUEST_BYTES:
                break             # decode_call names the limit
        return bytes(data)

    async def handle(self, req: PodOp) -> OpResult:
        if req.cmd == "status":
            return OpResult(ok=True)
        async with self._lock:
            return await {"add": self._add, "del": self._del, "check": self._check,
                          "gc": self._gc}[req.cmd](req)

    async def _add(self, req: PodOp) -> OpResult:
        # The pod may be newer than our last poll: decide on the current config.
        if self.poll_config():
            self._log.info("config reloaded")
        ns = req.pod_namespace or "default"
        name = req.pod_name or req.container_id[:12]
        if not self.config.loaded and ns not in self.opts.excluded:
            # Before the first view (API not synced, config unreadable) we do
            # not know whether the pod is ambient: the runtime retries.
            return OpResult(ok=False, code=ErrorCode.TRY_AGAIN_LATER,
                            error=f"mesh config not loaded yet ({self.config.error or 'syncing'}); "
                                  f"pod {ns}/{name} not started")
        facts = self.config.view.facts(ns, name)
        pod = PodRecord(container_id=req.container_id, namespace=ns, name=name, netns=req.netns,
                        ifname=req.ifname or "eth0", ips=req.ips,
                        service_account=facts.service_account)
        old = self.pods.get(req.container_id)
        if old and old.enrolled and old.netns == pod.netns:
            pod = replace(pod, enrolled=True)     # repeated ADD: refresh, idempotent
        if self.wants(ns, name):
            try:
                pod = await self._enroll(pod)
            except NoZtunnel as e:
                return OpResult(ok=False, code=ErrorCode.TRY_AGAIN_LATER, error=str(e))
            except (OSError, ZdsError, redirect.RedirectError, asyncio.TimeoutError) as e:
                return OpResult(ok=False, code=ErrorCode.AGENT_REFUSED,
                                error=f"cannot capture pod {ns}/{name}: {e}")
        self.pods[req.container_id] = pod
        self._save_state()
        return OpResult(ok=True, enrolled=pod.enrolled)

    async def _del(self, req: PodOp) -> OpResult:
        pod = self.pods.pop(req.container_id, None)
        if pod is not None:
            if pod.enrolled:
                await self._release(pod)
            self._save_state()
        return OpResult(ok=True)

    async def _check(self, req: PodOp) -> OpResult:
        pod = self.pods.get(req.container_id)
        if pod is None or not pod.enrolled:
            return OpResult(ok=True)
        missing = await asyncio.to_thread(redirect.check, pod.netns, self.opts.redirect)
        if missing:
            return OpResult(ok=False, code=ErrorCode.REDIRECTION_MISSING,
                            error=f"pod {pod.namespace}/{pod.name} is missing: {', '.join(missing)}")
        return OpResult(ok=True, enrolled=True)

    async def _gc(self, req: PodOp) -> OpResult:
        valid = {cid for cid, _ in req.valid}
        for cid in [c for c in self.pods if c not in valid]:
            pod = self.pods.pop(cid)
            if pod.enrolled:
                await self._release(pod)
        self._save_state()
        return OpResult(ok=True)
