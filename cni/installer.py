"""`shoal cni install`: put shoal-cni on a node and keep it in the chain.

Istio's install-cni, as a long-running process (the node agent DaemonSet's
second container, or one process per node of the local mesh):
1. copies the plugin binary into the node's CNI bin dir atomically (a temp
   file in the same dir, then rename, so the runtime never execs half a file);
2. waits for the node agent's enrollment snapshot (the plugin needs it to
   decide while the agent is down), then chains shoal-cni into the primary
   network config (`cni.conflist` chooses it as the runtime would);
3. watches the bin dir, the config dir and the agent's dir with inotify, and
   repairs both when another component rewrites them (a CNI upgrade that
   drops our entry, a new lexically-first config, a deleted binary);
4. on SIGTERM removes its entry and the binary, unless this is an upgrade:
   in Kubernetes it asks the API server whether its DaemonSet still exists
   and is not being deleted (Istio's rule: then a new pod follows and pods
   must keep being captured meanwhile); `--keep-on-exit` forces keeping.

Readiness: the file `<agent run dir>/chain-ready` exists exactly while the
binary and the chain entry are in place (the DaemonSet probes it).

The original bytes of every file it rewrites are kept in
`<agent run dir>/cni-install.json`, so uninstall restores them exactly
(under their original name) when nobody changed the file since.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import select
import signal
import ssl
from dataclasses import dataclass, field
from typing import Callable

from shoal.cni import conflist, protocol
from shoal.cni.binary import PLUGIN_NAME, plugin_path
from shoal.cni.conflist import ConfError
from shoal.core import log

READY_NAME = "chain-ready"
STATE_NAME = "cni-install.json"
# A writer replaces a config in a few steps (create, write, rename); wait
# for this much quiet before reading so we never parse half a file.
DEBOUNCE_S = 0.1
# Re-check even without events: a missed event (a bind mount replaced under
# us) costs at most this long. Istio re-checks on events only.
RESYNC_S = 5.0
# The exit-time API call must not eat the pod's termination grace (30 s).
API_TIMEOUT_S = 5.0
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallOptions:
    cni_bin_dir: str = "/opt/cni/bin"
    cni_conf_dir: str = "/etc/cni/net.d"
    agent_run_dir: str = "/var/run/shoal-cni"
    exclude_namespaces: tuple[str, ...] = ("kube-system", "istio-system")
    plugin_source: str = ""             # default: the packaged binary
    wait_for_agent: bool = True
    keep_on_exit: bool = False
    daemonset: str = ""                 # in Kubernetes: ours, to tell upgrade from uninstall
    namespace: str = ""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Same-dir temp + fsync + rename. The temp name has none of the CNI
    extensions and a leading dot, so no runtime ever loads it."""
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.shoal-tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(conflist.MAX_CONF_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError):
        return None


@dataclass
class Installer:
    opts: InstallOptions
    # Written file -> {"original_name", "original" (base64), "written" (sha256)}.
    saved: dict[str, dict] = field(default_factory=dict)
    ready: bool = False
    last_errors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._log = log.get("cni.install")
        self._source = self.opts.plugin_source or plugin_path()
        self._want: bytes | None = None
        self._installed_sig: tuple[int, int, int] | None = None
        self._load()

    # ------------------------------------------------------------ paths

    def p_state(self) -> str:
        return os.path.join(self.opts.agent_run_dir, STATE_NAME)

    def p_ready(self) -> str:
        return os.path.join(self.opts.agent_run_dir, READY_NAME)

    def p_binary(self) -> str:
        return os.path.join(self.opts.cni_bin_dir, PLUGIN_NAME)

    def _load(self) -> None:
        try:
            with open(self.p_state(), "rb") as f:
                self.saved = json.loads(f.read())
        except (OSError, ValueError):
            self.saved = {}

    def _save(self) -> None:
        os.makedirs(self.opts.agent_run_dir, exist_ok=True)
        _write_atomic(self.p_state(), json.dumps(self.saved).encode(), 0o600)

    def _conf_files(self) -> dict[str, bytes]:
        out = {}
        for name in conflist.candidates(os.listdir(self.opts.cni_conf_dir)):
            data = _read(os.path.join(self.opts.cni_conf_dir, name))
            if data is not None:
                out[name] = data
        return out

    # ------------------------------------------------------------ install

    def _binary_sig(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.p_binary())
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def ensure_binary(self) -> bool:
        """The node's copy equals ours; True when it had to be (re)written.
        Reads the node's copy only when its inode, size or mtime moved."""
        if self._want is None:
            with open(self._source, "rb") as f:
                self._want = f.read()
        sig = self._binary_sig()
        if sig is not None and sig == self._installed_sig:
            return False
        if _read(self.p_binary()) != self._want:
            _write_atomic(self.p_binary(), self._want, 0o755)
            self._log.info("plugin binary installed", extra={"fields": {"path": self.p_binary()}})
            self._installed_sig = self._binary_sig()
            return True
        self._installed_sig = sig
        return False

    def reconcile(self) -> bool:
        """Bring the node to the installed state; True when the chain is in place."""
        self.ensure_binary()
        snapshot = os.path.join(self.opts.agent_run_dir, protocol.SNAPSHOT_NAME)
        if self.opts.wait_for_agent and not os.path.exists(snapshot):
            return self._set_ready(False, f"waiting for the node agent's {snapshot}")
        files = self._conf_files()
        name, errors = conflist.primary(files)
        if tuple(errors) != self.last_errors:
            for e in errors:
                self._log.error("CNI config left alone", extra={"fields": {"error": e}})
            self.last_errors = tuple(errors)
        if name is None:
            return self._set_ready(False, f"no primary CNI network config in {self.opts.cni_conf_dir}")
        ours = conflist.entry(agent_run_dir=self.opts.agent_run_dir,
                              exclude_namespaces=self.opts.exclude_namespaces)
        rw = conflist.insert(name, files[name], ours)
        if rw is not None:
            if not conflist.has_entry(name, files[name]):
                self.saved[rw.name] = {"original_name": name,
                                       "original": base64.b64encode(files[name]).decode()}
            self._apply(rw)
            self.saved.setdefault(rw.name, {"original_name": rw.name, "original": ""})
            self.saved[rw.name]["written"] = _sha(rw.data)
            self._save()
            self._log.info("shoal-cni chained", extra={"fields": {"file": rw.name}})
        # Our entry anywhere else (the primary changed): take it out there.
        for other, data in files.items():
            if other not in (name, rw.name if rw else name) and conflist.has_entry(other, data):
                self._restore(other, data)
        return self._set_ready(True, "")

    def _apply(self, rw: conflist.Rewrite) -> None:
        _write_atomic(os.path.join(self.opts.cni_conf_dir, rw.name), rw.data)
        if rw.remove and rw.remove != rw.name:
            try:
                os.unlink(os.path.join(self.opts.cni_conf_dir, rw.remove))
            except FileNotFoundError:
                pass

    def _restore(self, name: str, data: bytes) -> None:
        """Take our entry out of `name`: the original bytes if unchanged since."""
        rec = self.saved.pop(name, None)
        if rec and rec.get("original") and rec.get("written") == _sha(data):
            orig = rec["original_name"]
            _write_atomic(os.path.join(self.opts.cni_conf_dir, orig), base64.b64decode(rec["original"]))
            if orig != name:
                os.unlink(os.path.join(self.opts.cni_conf_dir, name))
        else:
            try:
                rw = conflist.remove(name, data)
            except ConfError as e:
                self._log.error("cannot remove shoal-cni", extra={"fields": {"error": str(e)}})
                rw = None
            if rw is not None:
                self._apply(rw)
        self._save()
        self._log.info("shoal-cni unchained", extra={"fields": {"file": name}})

    def _set_ready(self, ready: bool, why: str) -> bool:
        if ready:
            if not os.path.exists(self.p_ready()):
                _write_atomic(self.p_ready(), b"ready\n")
            if not self.ready:
                self._log.info("ready: shoal-cni in the chain")
        else:
            try:
                os.unlink(self.p_ready())
            except FileNotFoundError:
                pass
            if self.ready:
                self._log.warning("not ready", extra={"fields": {"why": why}})
        self.ready = ready
        return ready

    # ------------------------------------------------------------ uninstall

    def uninstall(self) -> None:
        """Remove our entry from every config file, then the binary."""
        self._set_ready(False, "uninstalling")
        for name, data in self._conf_files().items():
            if conflist.has_entry(name, data):
                self._restore(name, data)
        try:
            os.unlink(self.p_binary())
        except FileNotFoundError:
            pass
        try:
            os.unlink(self.p_state())
        except FileNotFoundError:
            pass
        self._log.info("shoal-cni uninstalled from this node")

    # ------------------------------------------------------------ run

    def run(self, *, stop_signals=(signal.SIGTERM, signal.SIGINT)) -> None:
        """Install, then watch and repair until a stop signal."""
        from shoal.cni.inotify import Watch
        for d in (self.opts.cni_bin_dir, self.opts.cni_conf_dir, self.opts.agent_run_dir):
            os.makedirs(d, exist_ok=True)
        try:
            os.unlink(self.p_ready())        # a previous run's file says nothing about now
        except FileNotFoundError:
            pass
        stopping: list[int] = []
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old = signal.set_wakeup_fd(w)
        for s in stop_signals:
            signal.signal(s, lambda sig, _f: stopping.append(sig))
        watch = Watch([self.opts.cni_bin_dir, self.opts.cni_conf_dir, self.opts.agent_run_dir])
        readable: list[Watch | int] = [watch, r]
        try:
            self._safe_reconcile()
            while not stopping:
                ready, _, _ = select.select(readable, [], [], RESYNC_S)
                if watch in ready:
                    # Debounce: let a multi-step write finish before reading.
                    while watch.drain() and not stopping:
                        select.select([r], [], [], DEBOUNCE_S)
                if r in ready:
                    while True:
                        try:
                            if not os.read(r, 64):
                                break
                        except BlockingIOError:
                            break
                if not stopping:
                    self._safe_reconcile()
        finally:
            watch.close()
            signal.set_wakeup_fd(old)
            os.close(r)
            os.close(w)
        if self.keep_on_exit_decision():
            self._log.info("stopping; shoal-cni stays installed (upgrade or restart)")
        else:
            self.uninstall()

    def _safe_reconcile(self) -> None:
        try:
            self.reconcile()
        except (OSError, ConfError) as e:
            self._set_ready(False, str(e))
            self._log.error("install step failed; retrying on the next change",
                            extra={"fields": {"error": str(e)}})

    def keep_on_exit_decision(self, fetch: Callable[[], tuple[int, bytes]] | None = None) -> bool:
        """True: leave binary and chain in place (an upgrade); False: uninstall."""
        if self.opts.keep_on_exit:
            return True
        if not self.opts.daemonset:
            return False                   # not managed by a DaemonSet: a stop is an uninstall
        try:
            status, body = (fetch or self._fetch_daemonset)()
            return not daemonset_going_away(status, body)
        except (OSError, ValueError, ssl.SSLError, http.client.HTTPException) as e:
            # Never leave a node without capture on a guess; `shoal cni uninstall` cleans by hand.
            self._log.error("cannot tell upgrade from uninstall; keeping shoal-cni installed",
                            extra={"fields": {"error": str(e)}})
            return True

    def _fetch_daemonset(self) -> tuple[int, bytes]:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = int(os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
        with open(os.path.join(SA_DIR, "token")) as f:
            token = f.read().strip()
        ns = self.opts.namespace or open(os.path.join(SA_DIR, "namespace")).read().strip()
        ctx = ssl.create_default_context(cafile=os.path.join(SA_DIR, "ca.crt"))
        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=API_TIMEOUT_S)
        try:
            conn.request("GET", f"/apis/apps/v1/namespaces/{ns}/daemonsets/{self.opts.daemonset}",
                         headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def daemonset_going_away(status: int, body: bytes) -> bool:
    """Istio's test (`ShouldStopCleanup` inverted): the DaemonSet is gone or
    being deleted. Raises ValueError on an answer that says neither."""
    if status == 404:
        return True
    if status != 200:
        raise ValueError(f"API server answered {status}")
    obj = json.loads(body)
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))
