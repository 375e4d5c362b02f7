"""The supervisor: a pre-fork arbiter that never handles traffic.

Loop (STYLE.md rule 6), one pass at a time:

    wait (poll on the signal pipe, worker control sockets, upgrade pipe,
          the watcher's published pipe, until the next deadline: see _deadlines)
    -> handle_<sig>() for each queued signal
    -> murder_stale()   hung workers: SIGABRT, then SIGKILL
    -> reap()           waitpid(-1, WNOHANG) until nothing is left
    -> reconcile()      desired slots/generation versus what runs (idempotent)

Invariants:
- A slot's listeners are never closed while the slot exists (handoff.py):
  restarts, SIGHUP rolls and SIGUSR2 upgrades reuse them, so no queued
  connection is reset. TTOU and stopping close them, first refusing new
  handshakes on them (shards/closing.py, docs/operations.md),
  and so does a worker's "drop"/"release" (the app gave them up for good,
  e.g. a pod left the mesh: its ports must not stay bound).
- SIGHUP bumps the generation; a slot's old worker retires only once the
  slot's new worker said "ready".
- Every child is reaped here and nowhere else.
- Workers poll nothing at a short interval: a generation the watcher
  published ("routing") and a /logging change from one worker ("log") are
  pushed to every worker's control socket from here.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from dataclasses import dataclass

from shoal.core import gcfreeze
from shoal.core import log as core_log
from shoal.core import metrics as core_metrics
from shoal.core.drain import DrainMode
from shoal.core.identity.store import CertStore
from shoal.core.sockets import enable_listener_migration
from shoal.routing.runtime import TableHandle
from shoal.shards import exitcodes, routing_glue
from shoal.shards.app import App
from shoal.shards.configwatcher import WatcherChild
from shoal.shards.handoff import namespace_prefix, recv_message, send_message
from shoal.shards.heartbeat import HeartbeatTable
from shoal.shards.options import KUBERNETES_SCHEME, MAX_WORKERS, SupervisorOptions
from shoal.shards.proc import (_exit, _kill, describe_status, raise_fd_limit, remove_pidfile,
                               write_pidfile)
from shoal.shards.closing import HANDSHAKE_SETTLE, refuse_new_handshakes
from shoal.shards.signals import HANDLED, SignalQueue
from shoal.shards.upgrade import Inherited, Upgrade
from shoal.shards.worker import Worker

# The loop polls nothing: it sleeps until an event (signal, control
# message, upgrade pipe) or its next deadline (a backoff restart, a
# heartbeat that could go stale, an abort grace, the stop deadline), so an
# idle node's supervisor wakes about once per worker_timeout / 2 per worker.
# LOOP_TICK is only the wait when no deadline exists at all, which the
# loop never meets while a worker or the watcher runs or is due.
LOOP_TICK = 0.2
# Past the stop deadline, SIGKILL is sent again this often until every
# child is reaped (a child in uninterruptible sleep dies later).
KILL_REPEAT = 1.0
# Consecutive boot failures (exit before "ready") that halt the supervisor:
# gunicorn halts on the first; a few retries ride out a transient error.
MAX_BOOT_FAILURES = 5
# Boot-failure backoff: 0.1, 0.2, 0.4, 0.8 s -> a halt within ~2 s.
BOOT_BACKOFF_BASE = 0.1
# A crashed worker is replaced at once; if its slot keeps crashing the
# delay doubles from this, up to RESTART_BACKOFF_MAX.
RESTART_BACKOFF_BASE = 0.1
RESTART_BACKOFF_MAX = 10.0
# A worker (or the config watcher) up this long after "ready" resets its
# crash streak.
STABLE_AFTER = 5.0
# After SIGABRT a hung worker gets this long (to dump its stacks) before SIGKILL.
ABORT_GRACE = 1.0
# SIGQUIT: workers get this long to close before SIGKILL.
IMMEDIATE_STOP_GRACE = 2.0
# Beyond --drain-timeout, time for workers to exit before SIGKILL.
STOP_MARGIN = 2.0


@dataclass(slots=True, kw_only=True, eq=False)
class WorkerProc:
    pid: int
    slot: int
    generation: int
    hb: int
    ctrl: socket.socket
    started: float
    ready_at: float | None = None
    retiring: bool = False
    ctrl_open: bool = True
    abort_at: float | None = None


class Supervisor:
    def __init__(self, app: App, options: SupervisorOptions, *,
                 signal_queue: SignalQueue | None = None) -> None:
        self.app = app
        self.options = options
        self.log = core_log.get("supervisor")
        self.signals = signal_queue or SignalQueue()
        self.num_workers = options.worker_count
        self.generation = 1
        self.workers: dict[int, WorkerProc] = {}
        self.slot_socks: dict[int, dict[str, socket.socket]] = {}
        self.not_before: dict[int, float] = {}
        self.streak: dict[int, int] = {}
        self.boot_failures = 0
        self.stopping: DrainMode | None = None
        self.stop_deadline = 0.0
        self.exit_code: int | None = None
        self.watcher: WatcherChild | None = None     # with --config only
        self.upgrade: Upgrade | None = None           # SIGUSR2: the new supervisor
        self.inherited = Inherited(slot_socks={}, ready_fd=None)   # from an old supervisor
        self.announced_ready = False
        self._log_seq = 0
        self.cwd = os.getcwd()
        self.heartbeats: HeartbeatTable | None = None
        self.table: TableHandle | None = None
        self.metrics_dir: str | None = None
        # Removed on exit only while ours: a SIGUSR2 hands it to the new
        # supervisor (counters go on from the old workers' totals), which
        # owns it once ready.
        self.owns_metrics_dir = False
        # True once a new supervisor (SIGUSR2) serves our listeners: stopping
        # then must not touch the sockets themselves (shards/closing.py).
        self.handed_over = False
        self.cert_store: CertStore | None = None

    @property
    def _hb_table(self) -> HeartbeatTable:
        """The heartbeat table, which _setup creates before the loop runs."""
        assert self.heartbeats is not None, "the heartbeat table is created by _setup"
        return self.heartbeats

    # -- main loop --------------------------------------------------------------

    def run(self) -> int:
        try:
            self._setup()
            # Workers at once, not after a first idle LOOP_TICK: a restarted
            # node proxy serves that much sooner.
            self.reconcile()
            while True:
                self._wait(self._timeout())
                for sig in self.signals.drain():
                    getattr(self, f"handle_{HANDLED[signal.Signals(sig)]}")()
                self.murder_stale()
                self.reap()
                if self.stopping is not None and not self.workers and self.watcher_pid is None:
                    return self.exit_code if self.exit_code is not None else exitcodes.OK
                self.reconcile()
                self._check_ready()
                self._follow_log_level()
        except exitcodes.SupervisorExit as e:
            self.log.error(str(e), extra={"fields": {"exit_code": e.code,
                                                     "exit_name": exitcodes.NAMES.get(e.code)}})
            return e.code
        except Exception:
            self.log.exception("supervisor failed")
            return exitcodes.ERROR
        finally:
            self._cleanup()

    def _setup(self) -> None:
        o = self.options
        self.signals.install()
        raise_fd_limit()
        self.inherited = Inherited.from_environ(self.log)
        self.slot_socks = self.inherited.slot_socks
        if (o.config is not None and not o.config.startswith(KUBERNETES_SCHEME)
                and not os.path.isdir(o.config)):
            raise exitcodes.SupervisorExit(exitcodes.CONFIG_ERROR,
                                           f"--config {o.config}: not a directory")
        try:
            self._metrics_dir()
            self.heartbeats = HeartbeatTable.create()
            # The node's certificates outlive workers, reloads and upgrades.
            self.cert_store = CertStore.adopt_or_create()
        except OSError as e:
            raise exitcodes.SupervisorExit(exitcodes.SETUP_ERROR, f"cannot set up: {e}") from e
        self.table = routing_glue.create_table(o.config)
        if not enable_listener_migration():
            self.log.warning("cannot enable net.ipv4.tcp_migrate_req (kernel < 5.14 or no "
                             "permission): a slot closed by SIGTTOU may reset connections "
                             "queued on it")
        if self.inherited.ready_fd is None:
            self._write_pidfile()
        if o.config is not None:
            self.watcher = WatcherChild(o.config, log_level=o.log_level,
                                        stable_after=STABLE_AFTER, log=self.log)
            self._spawn_watcher()
        self.log.info("supervisor started", extra={"fields": {
            "workers": self.num_workers, "app": self.app.name,
            "inherited_listeners": sum(len(v) for v in self.slot_socks.values())}})

    def _metrics_dir(self) -> None:
        inherited = os.environ.get(core_metrics.ENV_DIR, "")
        if self.inherited.ready_fd is not None and inherited and os.path.isdir(inherited):
            core_metrics.adopt_dir(inherited)   # an upgrade: the old workers' files stay summed
            self.metrics_dir = inherited
        else:
            self.metrics_dir = core_metrics.create_dir()
            self.owns_metrics_dir = True

    def _timeout(self) -> float:
        now = time.monotonic()
        pending = [t - now for t in self._deadlines() if t > now]
        return min(pending) if pending else LOOP_TICK

    def _deadlines(self) -> list[float]:
        """Every monotonic time at which a pass may have something to do
        that no event announces. Times already past are skipped by the
        caller: what they trigger ran on the pass that found them due."""
        out = list(self.not_before.values())          # backoff restarts
        if self.stopping is not None:
            out.append(self.stop_deadline)
        for w in self.workers.values():
            if w.abort_at is not None:
                out.append(w.abort_at + ABORT_GRACE)
            else:   # the earliest this worker's heartbeat could go stale
                out.append(self._hb_table.last(w.hb) + self.options.worker_timeout)
        if self.watcher is not None and self.watcher.pid is None:
            out.append(self.watcher.not_before)
        return out

    def _wait(self, timeout: float) -> None:
        ctrls = {w.ctrl.fileno(): w for w in self.workers.values() if w.ctrl_open}
        fds = [self.signals.rfd, *ctrls]
        if self.upgrade and not self.upgrade.done:
            fds.append(self.upgrade.ready_fd)
        published = self.watcher.published_r if self.watcher is not None else -1
        if self.watcher is not None:
            fds.append(published)
        # poll, not select: fd numbers pass FD_SETSIZE (1024) once a node
        # holds listeners for many pods.
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        try:
            events = poller.poll(timeout * 1000)
        except InterruptedError:
            return
        for fd, _ in events:
            if fd in ctrls:
                self._read_ctrl(ctrls[fd])
            elif self.upgrade and fd == self.upgrade.ready_fd:
                self._upgrade_progress(self.upgrade)
            elif fd == published and self.watcher is not None and self.watcher.drain_published():
                self._push("routing")

    # -- signals ------------------------------------------------------------------

    def handle_chld(self) -> None:
        pass   # reap() runs on every pass

    def handle_term(self) -> None:
        self.begin_stop(DrainMode.GRACEFUL, "SIGTERM")

    def handle_int(self) -> None:
        self.begin_stop(DrainMode.GRACEFUL, "SIGINT")

    def handle_quit(self) -> None:
        self.begin_stop(DrainMode.IMMEDIATE, "SIGQUIT")

    def handle_hup(self) -> None:
        if self.stopping is not None:
            return
        self.generation += 1
        if self.watcher is not None:
            self.watcher.send(signal.SIGHUP)
        self.log.info("reloading: rolling workers", extra={"fields": {"generation": self.generation}})

    def handle_ttin(self) -> None:
        self.num_workers = min(MAX_WORKERS, self.num_workers + 1)
        self.log.info("scaling up", extra={"fields": {"workers": self.num_workers}})

    def handle_ttou(self) -> None:
        self.num_workers = max(1, self.num_workers - 1)
        self.log.info("scaling down", extra={"fields": {"workers": self.num_workers}})

    def handle_usr2(self) -> None:
        if self.stopping is not None or self.upgrade is not None:
            self.log.warning("upgrade ignored: already stopping or upgrading")
            return
        # The metrics dir and the certificate store pass on (in their env vars).
        keep = [self.cert_store.fd] if self.cert_store is not None else []
        self.upgrade = Upgrade.start(self.slot_socks, cwd=self.cwd, log=self.log, inherit_fds=keep,
                                     close_in_child=self._close_ctrls)

    # -- stop ------------------------------------------------------------------------

    def begin_stop(self, mode: DrainMode, why: str, code: int = exitcodes.OK) -> None:
        if self.stopping is DrainMode.IMMEDIATE or (self.stopping is mode):
            if self.stopping is DrainMode.GRACEFUL:
                self.log.info("already draining; SIGQUIT stops at once")
            return
        self.stopping = mode
        if self.exit_code is None:
            self.exit_code = code
        graceful = mode is DrainMode.GRACEFUL
        grace = self.options.drain_timeout if graceful else IMMEDIATE_STOP_GRACE
        self.stop_deadline = time.monotonic() + grace + STOP_MARGIN
        self.log.info("stopping", extra={"fields": {"reason": why, "mode": mode.value,
                                                   "drain_timeout_s": grace}})
        # Our copies go first, so each worker's own close (after it took what
        # is queued) is the last reference and nothing queued is reset.
        self._close_slots(lambda slot: True, last_reference=not self._listeners_shared())
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        for w in self.workers.values():
            _kill(w.pid, sig)
        if self.watcher is not None:
            self.watcher.send(signal.SIGTERM)

    # -- stale workers ------------------------------------------------------------------

    def murder_stale(self) -> None:
        now = time.monotonic()
        if self.stopping is not None and now > self.stop_deadline:
            for pid in [*self.workers, *([self.watcher_pid] if self.watcher_pid else [])]:
                _kill(pid, signal.SIGKILL)
            self.stop_deadline = now + KILL_REPEAT
            return
        for w in self.workers.values():
            if w.abort_at is not None:
                if now - w.abort_at >= ABORT_GRACE:
                    _kill(w.pid, signal.SIGKILL)
                continue
            silent = now - self._hb_table.last(w.hb)
            if silent > self.options.worker_timeout:
                self.log.error("worker hung: no heartbeat; sending SIGABRT then SIGKILL",
                               extra={"fields": {"worker_pid": w.pid, "worker": w.slot,
                                                 "silent_s": round(silent, 1)}})
                _kill(w.pid, signal.SIGABRT)
                w.abort_at = now

    # -- reaping -----------------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.workers:
                self._worker_exited(self.workers.pop(pid), status)
            elif self.watcher is not None and pid == self.watcher.pid:
                self.watcher.exited(status, restart=self.stopping is None)
            elif self.upgrade is not None and pid == self.upgrade.pid:
                self._upgrade_exited(self.upgrade, status)
            # else: an unknown child (we may be PID 1 in a container): reaped quietly

    def _worker_exited(self, w: WorkerProc, status: int) -> None:
        self._hb_table.release(w.hb)
        w.ctrl.close()
        core_metrics.mark_dead(w.pid)
        how = describe_status(status)
        fields = {"worker_pid": w.pid, "worker": w.slot, "generation": w.generation, "status": how}
        if w.retiring or self.stopping is not None:
            self.log.info("worker exited", extra={"fields": fields})
            return
        now = time.monotonic()
        if w.ready_at is None:   # died or hung before "ready": a boot failure
            self._boot_failed(w, how, fields, now)
            return
        fresh = now - (w.ready_at or now) >= STABLE_AFTER
        streak = 1 if fresh else self.streak.get(w.slot, 0) + 1
        self.streak[w.slot] = streak
        delay = 0.0 if streak == 1 else min(RESTART_BACKOFF_MAX,
                                             RESTART_BACKOFF_BASE * 2 ** (streak - 2))
        self.not_before[w.slot] = now + delay
        reason = "hung" if w.abort_at is not None else "died"
        core_metrics.istio().worker_restarts.labels(reason).inc()
        self.log.warning(f"worker {reason}; restarting", extra={"fields": {**fields,
                                                                          "restart_in_s": delay}})

    def _boot_failed(self, w: WorkerProc, how: str, fields: dict, now: float) -> None:
        self.boot_failures += 1
        self.log.error("worker failed to boot", extra={"fields": {
            **fields, "failures_in_a_row": self.boot_failures}})
        if self.boot_failures < MAX_BOOT_FAILURES:
            self.not_before[w.slot] = now + BOOT_BACKOFF_BASE * 2 ** (self.boot_failures - 1)
            return
        serving = [x for x in self.workers.values() if x.ready_at and not x.retiring]
        if serving and any(x.generation < self.generation for x in serving):
            # A SIGHUP roll whose new workers cannot boot: keep the old ones.
            self.generation = max(x.generation for x in serving)
            self.boot_failures = 0
            for x in list(self.workers.values()):
                if x.generation > self.generation and not x.retiring:
                    self._retire(x, "reload abandoned")
            self.log.error("reload failed: new workers cannot boot; keeping the running ones",
                           extra={"fields": {"last_status": how}})
            return
        self.log.error(f"workers failed to boot {self.boot_failures} times in a row "
                       f"(last: {how}); halting with exit code {exitcodes.BOOT_ERROR}. "
                       "The worker's own error is logged just above.")
        self.begin_stop(DrainMode.IMMEDIATE, "boot failures", exitcodes.BOOT_ERROR)

    # -- reconcile ---------------------------------------------------------------------

    def reconcile(self) -> None:
        if self.stopping is not None:
            return
        now = time.monotonic()
        self._close_slots(lambda slot: slot >= self.num_workers, last_reference=True)
        for w in list(self.workers.values()):
            if w.slot >= self.num_workers and not w.retiring:
                self._retire(w, "scale down")
        for slot in range(self.num_workers):
            members = [w for w in self.workers.values() if w.slot == slot and not w.retiring]
            current = [w for w in members if w.generation == self.generation]
            if not current:
                if now >= self.not_before.get(slot, 0.0):
                    self._spawn(slot)
            elif any(w.ready_at for w in current):
                for w in members:
                    if w.generation != self.generation:
                        self._retire(w, "replaced by a newer generation")
        if self.watcher is not None and self.watcher.due(now):
            self._spawn_watcher()

    def _retire(self, w: WorkerProc, why: str) -> None:
        w.retiring = True
        self.log.info("retiring worker", extra={"fields": {"worker_pid": w.pid, "worker": w.slot,
                                                          "reason": why}})
        _kill(w.pid, signal.SIGTERM)

    def _listeners_shared(self) -> bool:
        """SIGUSR2: a new supervisor inherited our listeners (starting or serving)."""
        return self.handed_over or (self.upgrade is not None and not self.upgrade.done)

    def _close_slots(self, which, *, last_reference: bool) -> None:
        """Close our copies of the listeners of the slots `which` selects.

        `last_reference`: the slot's worker, told to stop next, holds the
        only other copy (SIGTTOU, a stop without upgrade). The sockets then
        refuse new handshakes and those under way get HANDSHAKE_SETTLE to
        reach the accept queue before the worker takes it and closes, so no
        connection is reset by the close (shards/closing.py). The
        supervisor's loop pauses that long; it handles no traffic.
        """
        slots = [s for s in self.slot_socks if which(s)]
        if last_reference and slots:
            quiesced = [refuse_new_handshakes(sock)
                        for slot in slots for sock in self.slot_socks[slot].values()]
            if any(quiesced):
                time.sleep(HANDSHAKE_SETTLE)
        for slot in slots:
            for sock in self.slot_socks.pop(slot).values():
                sock.close()

    def _push(self, word: str, skip: WorkerProc | None = None) -> None:
        """Tell every worker (but `skip`) on its control socket: see shards/worker.py."""
        for w in self.workers.values():
            if w is skip or not w.ctrl_open:
                continue
            try:
                send_message(w.ctrl, word)
            except OSError:
                # Full: the worker has words queued it has not read yet, and
                # acts on what it finds then. Gone: reap() handles it.
                pass

    def _follow_log_level(self) -> None:
        # /logging in any worker writes the shared word; follow it here too.
        level, seq = self._hb_table.log_control()
        if seq != self._log_seq:
            self._log_seq = seq
            core_log.apply_levels(level, core_log.scopes_of(self._hb_table.log_scopes()))

    def _check_ready(self) -> None:
        if self.announced_ready or self.stopping is not None:
            return
        ready_slots = {w.slot for w in self.workers.values()
                       if w.ready_at and w.generation == self.generation}
        if len(ready_slots) < self.num_workers:
            return
        self.announced_ready = True
        self.owns_metrics_dir = True
        if self.inherited.ready_fd is not None:
            self._write_pidfile()      # ours now: the old supervisor removes nothing
            self.inherited.announce_ready()
        self.log.info("supervisor ready", extra={"fields": {"workers": self.num_workers}})

    # -- spawning ------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        hb = self._hb_table.allocate()
        worker = Worker(app=self.app, options=self.options, slot=slot, generation=self.generation,
                        hb_index=hb, heartbeats=self._hb_table, ctrl=child,
                        inherited=dict(self.slot_socks.get(slot, {})),
                        table_name=getattr(self.table, "name", None), supervisor_pid=os.getpid())
        pid = gcfreeze.fork()
        if pid == 0:
            code = exitcodes.WORKER_CRASH
            try:
                parent.close()
                self._close_in_child(keep_slot=slot)
                if self.watcher is not None:
                    self.watcher.close_pipe()   # the watcher's and ours, not a worker's
                code = worker.run()
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                _exit(code)
        child.close()
        parent.setblocking(False)
        now = time.monotonic()
        self._hb_table.assign(hb, pid, now)
        self.workers[pid] = WorkerProc(pid=pid, slot=slot, generation=self.generation, hb=hb,
                                       ctrl=parent, started=now)
        self.log.info("worker started", extra={"fields": {"worker_pid": pid, "worker": slot,
                                                         "generation": self.generation}})

    def _close_ctrls(self) -> None:
        for w in self.workers.values():
            w.ctrl.close()

    def _close_in_child(self, keep_slot: int | None) -> None:
        """Post-fork: drop the supervisor's fds this child must not hold."""
        self._close_ctrls()
        for slot, socks in self.slot_socks.items():
            if slot != keep_slot:
                for sock in socks.values():
                    sock.close()
        self.signals.close()
        if self.inherited.ready_fd is not None:
            os.close(self.inherited.ready_fd)
        if self.upgrade is not None:
            self.upgrade.close_in_child()

    @property
    def watcher_pid(self) -> int | None:
        return self.watcher.pid if self.watcher is not None else None

    def _spawn_watcher(self) -> None:
        if self.watcher is not None and self.table is not None:
            self.watcher.spawn(self.table.name, lambda: self._close_in_child(keep_slot=None))

    # -- control messages from workers ------------------------------------------------------

    def _read_ctrl(self, w: WorkerProc) -> None:
        while True:
            try:
                msg = recv_message(w.ctrl)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = None
            if msg is None:
                w.ctrl_open = False
                return
            text, fds = msg
            self._on_message(w, text, fds)

    def _on_message(self, w: WorkerProc, text: str, fds: list[int]) -> None:
        verb, _, key = text.partition(" ")
        socks = [socket.socket(fileno=fd) for fd in fds]
        if verb == "ready":
            w.ready_at = time.monotonic()
            self.boot_failures = 0
        elif verb == "listen" and socks and self.stopping is None and w.slot < self.num_workers:
            old = self.slot_socks.setdefault(w.slot, {}).get(key)
            if old is not None:
                old.close()
            self.slot_socks[w.slot][key] = socks.pop()
        elif verb == "drop":
            sock = self.slot_socks.get(w.slot, {}).pop(key, None)
            if sock is not None:
                sock.close()
        elif verb == "release" and key:
            self._release_namespace(w.slot, key)
        elif verb == "log":      # /logging in that worker: the others follow
            self._push("log", skip=w)
        for sock in socks:
            sock.close()

    def _release_namespace(self, slot: int, namespace_key: str) -> None:
        """A worker is done with a namespace (a pod left the mesh): close the
        slot's copies of its listeners, or the pod's ports stay bound."""
        socks = self.slot_socks.get(slot, {})
        prefix = namespace_prefix(namespace_key)
        keys = [k for k in socks if k.startswith(prefix)]
        for k in keys:
            socks.pop(k).close()
        if keys:
            self.log.info("released listeners", extra={"fields": {
                "worker": slot, "namespace": namespace_key, "listeners": len(keys)}})

    # -- upgrade (SIGUSR2, shards/upgrade.py) ----------------------------------------------------

    def _upgrade_progress(self, upgrade: Upgrade) -> None:
        if upgrade.progress():
            self.owns_metrics_dir = False      # the new supervisor adopted it
            self.handed_over = True
            self.begin_stop(DrainMode.GRACEFUL, "upgraded")

    def _upgrade_exited(self, upgrade: Upgrade, status: int) -> None:
        if upgrade.exited(status):
            self.owns_metrics_dir = False
            self.handed_over = True
            self.begin_stop(DrainMode.GRACEFUL, "upgraded")
        if self.stopping is None:
            self.upgrade = None

    # -- files and cleanup ------------------------------------------------------------------------

    def _write_pidfile(self) -> None:
        try:
            write_pidfile(self.options.pidfile)
        except OSError as e:
            raise exitcodes.SupervisorExit(exitcodes.SETUP_ERROR,
                                           f"cannot write --pidfile {self.options.pidfile}: {e}")

    def _remove_pidfile(self) -> None:
        remove_pidfile(self.options.pidfile)

    def _cleanup(self) -> None:
        # Only non-empty after an unexpected error: stop the children hard.
        for pid in [*self.workers, *([self.watcher_pid] if self.watcher_pid else [])]:
            _kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        # The workers are gone: nobody would take what is queued anyway.
        self._close_slots(lambda slot: True, last_reference=False)
        if self.heartbeats is not None:
            self.heartbeats.unlink()
        if self.table is not None:
            try:
                self.table.unlink()
            except Exception:
                self.log.exception("routing table unlink failed")
        if self.metrics_dir and self.owns_metrics_dir:
            core_metrics.remove_dir(self.metrics_dir)
        if self.cert_store is not None:
            self.cert_store.close()
        if self.watcher is not None:
            self.watcher.close_pipe()
        self._remove_pidfile()
        self.signals.close()
        self.log.info("supervisor stopped", extra={"fields": {"exit_code": self.exit_code}})
