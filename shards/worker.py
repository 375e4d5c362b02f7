"""A worker: one process, one uvloop event loop, one app instance.

Fork contract (see also shards/app.py):
- `Worker.__init__` runs in the supervisor before the fork and only stores
  references; it touches no process state.
- `Worker.run()` runs in the child right after the fork: it resets signal
  dispositions, installs its own handlers (TERM: graceful drain, QUIT:
  immediate, INT ignored since a terminal's Ctrl-C reaches the whole process
  group and the supervisor decides), asks the kernel for SIGTERM if the
  supervisor dies, attaches the routing view, builds the app's
  `WorkerContext`, starts the app and the admin/metrics/readiness servers on
  its slot's SO_REUSEPORT sockets, then tells the supervisor "ready".
- Its one periodic timer (`ctx.ticker`, shared with the app's periodic
  work) ticks at the heartbeat's pace, `worker_timeout / 2`: each tick
  stamps its heartbeat slot (a blocked event loop stops the stamps, which
  is how the supervisor spots a hung worker), reads the shared log-level
  word and tells the routing table it holds no old generation
  (`RoutingView.quiesce`: an idle worker would otherwise keep the writer
  from reusing freed blocks until the table is full, routing/shm.py, QSBR).
- What must be seen sooner is pushed on its control socket by the
  supervisor: "routing" (the watcher published a generation) runs every
  hook at once (the app's generation check, the quiesce), "log" (another
  worker's /logging) applies the shared word. The tick is then only the
  safety poll for a push that was lost (`Worker.safety_poll`).
"""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import gc
import logging
import os
import signal
import socket
import time
from typing import Sequence

from shoal.core import drain as core_drain
from shoal.core import gcfreeze
from shoal.core import log as core_log
from shoal.core import metrics as core_metrics
from shoal.core import sched
from shoal.core.admin import Endpoints, HttpProtocol
from shoal.core.sockets import NO_CPU, DefaultSocketFactory, SocketFactory
from shoal.shards import exitcodes, routing_glue, signals
from shoal.shards.app import App, WorkerContext
from shoal.shards.handoff import MSG_MAX, SlotSocketFactory, send_message
from shoal.shards.heartbeat import HeartbeatTable
from shoal.shards.options import SupervisorOptions, steering_cpu
from shoal.shards.proc import set_parent_death_signal
from shoal.shards.ticker import Ticker

# The worker's tick is its heartbeat's interval: worker_timeout / this
# (gunicorn notifies twice per timeout too). It is also the safety poll of
# the pushed words: a routing generation or /logging change whose push was
# lost (a watcher killed between its publish and its write, a word the
# supervisor could not send) is still seen within a tick, 15 s with the
# default timeout; pushes arrive within a millisecond.
HEARTBEATS_PER_TIMEOUT = 2
# The words a worker reads off its control socket at once: a few, since
# each is a whole event and pushes of one kind coalesce.
CTRL_READ_MAX = 64
# An IMMEDIATE drain (SIGQUIT) still lets the app close its own sockets.
IMMEDIATE_GRACE = 0.5


def _slice_or_none() -> int | None:
    try:
        return sched.slice_of() or None
    except sched.SliceUnsupported:
        return None


class Worker:
    def __init__(self, *, app: App, options: SupervisorOptions, slot: int, generation: int,
                 hb_index: int, heartbeats: HeartbeatTable, ctrl: socket.socket,
                 inherited: dict[str, socket.socket], table_name: str | None,
                 supervisor_pid: int) -> None:
        self.app = app
        self.options = options
        self.slot = slot
        self.generation = generation
        self.hb_index = hb_index
        self.heartbeats = heartbeats
        self.ctrl = ctrl
        self.inherited = inherited
        self.table_name = table_name
        self.supervisor_pid = supervisor_pid
        self.exit_code = exitcodes.WORKER_OK
        self.mode: core_drain.DrainMode | None = None
        self.log = core_log.get(f"worker.{slot}")

    # -- post-fork ----------------------------------------------------------

    def run(self) -> int:
        """Post-fork entry point; returns the process exit code."""
        signals.reset_in_child()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        core_log.setup(self.options.log_level)
        faulthandler.enable()   # a SIGABRT from the supervisor dumps every stack
        set_parent_death_signal(signal.SIGTERM)
        self._request_slice()
        import uvloop
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._main())
        except Exception:
            self.log.exception("worker crashed")
            return exitcodes.WORKER_CRASH

    def _request_slice(self) -> None:
        # Before any thread starts, so the loop's helpers inherit it too.
        ns = self.options.sched_slice_us * 1000
        try:
            sched.request_slice(ns)
        except sched.SliceUnsupported as e:
            # Every worker has the same reason: worker 0 says it, the others at debug.
            level = logging.INFO if self.slot == 0 else logging.DEBUG
            self.log.log(level, "scheduler slice not applied, the kernel's default kept",
                         extra={"fields": {"requested_us": self.options.sched_slice_us,
                                           "reason": str(e)}})

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.trigger, watcher = core_drain.new()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, core_drain.DrainMode.GRACEFUL)
        loop.add_signal_handler(signal.SIGQUIT, self.request_stop, core_drain.DrainMode.IMMEDIATE)
        self._apply_control(force=True)
        try:
            self.ctx = self._context(watcher)
            await self.app.start(self.ctx)
            self._start_admin()
        except Exception as e:
            self.log.exception("worker boot failed", extra={"fields": {"error": str(e)}})
            return exitcodes.WORKER_BOOT_ERROR
        self._release_unused()
        gcfreeze.freeze_booted()
        # Added after the app started: a boot that never finishes sends no
        # heartbeat, so the supervisor replaces it as hung.
        self.ctx.ticker.add(self._heartbeat)
        self.ctx.ticker.add(self._poll_shared)
        loop.add_reader(self.ctrl.fileno(), self._on_ctrl)
        self._notify("ready")
        self.log.info("worker ready", extra={"fields": {"worker": self.slot,
                                                       "generation": self.generation}})
        await self.stop.wait()
        await self._drain()
        loop.remove_reader(self.ctrl.fileno())
        self.ctx.ticker.stop()
        return self.exit_code

    def _context(self, watcher: core_drain.DrainWatcher) -> WorkerContext:
        self.view = routing_glue.attach(self.table_name)
        metrics = core_metrics.istio()
        metrics.set_build(self.app.name)

        cpu = steering_cpu(self.slot) if self.options.cpu_steering else NO_CPU

        def wrap(inner: SocketFactory) -> SocketFactory:
            return SlotSocketFactory(inner, self.inherited, self._notify, cpu)

        return WorkerContext(worker_id=self.slot, routing=self.view,
                             sockets=wrap(DefaultSocketFactory()), drain=watcher,
                             metrics=metrics, log=core_log.get(self.app.name),
                             generation=self.generation, wrap_factory=wrap,
                             ticker=Ticker(self.safety_poll))

    @property
    def safety_poll(self) -> float:
        """The tick: heartbeat pace, and the safety poll of the pushed words."""
        return self.options.worker_timeout / HEARTBEATS_PER_TIMEOUT

    def _start_admin(self) -> None:
        o = self.options
        ep = Endpoints(app=self.app, view=lambda: self.view, dump_routing=routing_glue.dump,
                       set_log_level=self.set_log_level_everywhere,
                       quit=lambda: os.kill(self.supervisor_pid, signal.SIGTERM),
                       info=self.info, draining=lambda: self.mode is not None)
        log = core_log.get("admin")
        for port, host, handler, name in (
                (o.admin_port, "127.0.0.1", ep.admin_handler(), "admin"),
                (o.metrics_port, o.bind, ep.metrics_handler(), "metrics"),
                (o.readiness_port, o.bind, ep.readiness_handler(), "readiness")):
            if port:
                self.ctx.serve(host, port, functools.partial(HttpProtocol, handler, log), name=name)

    def _release_unused(self) -> None:
        # Listeners the previous worker of this slot had and the app no
        # longer opens: the slot gives them up.
        for key, sock in list(self.inherited.items()):
            sock.close()
            self._notify(f"drop {key}")
        self.inherited.clear()

    def info(self) -> dict:
        return {"pid": os.getpid(), "worker_id": self.slot, "generation": self.generation,
                "supervisor_pid": self.supervisor_pid, "app": self.app.name,
                "sched_slice_ns": _slice_or_none(),
                "gc_frozen_objects": gc.get_freeze_count()}

    def _notify(self, text: str, fds: Sequence[int] = ()) -> None:
        try:
            send_message(self.ctrl, text, fds)
        except OSError:
            pass   # the supervisor is gone; the heartbeat task notices

    # -- periodic work --------------------------------------------------------

    def _heartbeat(self, now: float) -> None:
        self.heartbeats.stamp(self.hb_index, now)
        if os.getppid() != self.supervisor_pid:
            self.log.error("supervisor gone; stopping")
            self.exit_code = exitcodes.WORKER_ORPHANED
            self.request_stop(core_drain.DrainMode.GRACEFUL)
        self._report_active()

    def _on_ctrl(self) -> None:
        """The supervisor pushed words: act once however many queued up."""
        words = set()
        for _ in range(CTRL_READ_MAX):
            try:
                data = self.ctrl.recv(MSG_MAX, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:    # the supervisor is gone; the heartbeat hook notices
                asyncio.get_running_loop().remove_reader(self.ctrl.fileno())
                break
            words.add(data)
        if b"routing" in words:
            self.ctx.ticker.poke()      # the generation check and the quiesce, now
        elif b"log" in words:
            self._apply_control()

    def _poll_shared(self, now: float) -> None:
        self._apply_control()
        # On the event loop, between lookups (never inside one): an 8-byte load,
        # plus an 8-byte store when the generation moved. Never blocks.
        self.view.quiesce()

    def _report_active(self) -> None:
        # A gauge refreshed with the heartbeat, not per connection: exact
        # counts per accept/close would need a wrapper on every protocol.
        n = sum(lst.open_connections for lst in self.ctx.listeners)
        self.ctx.metrics.worker_active.labels(str(self.slot)).set(n)

    def _apply_control(self, force: bool = False) -> None:
        level, seq = self.heartbeats.log_control()
        if seq and (force or seq != getattr(self, "_log_seq", 0)):
            core_log.apply_levels(level, core_log.scopes_of(self.heartbeats.log_scopes()))
        self._log_seq = seq

    def set_log_level_everywhere(self, level: str) -> None:
        """Apply a level spec ("debug" or "access:debug,info") in every worker."""
        default, scopes = core_log.parse_spec(level)
        if default is None:
            default = logging.getLogger("shoal").level
        core_log.apply_levels(default, scopes)
        self.heartbeats.set_log_level(default, core_log.scope_codes(scopes))
        # The supervisor follows the word and pushes "log" to the other workers.
        self._notify("log")

    # -- drain ------------------------------------------------------------------

    def request_stop(self, mode: core_drain.DrainMode) -> None:
        if self.mode is None or mode is core_drain.DrainMode.IMMEDIATE:
            self.mode = mode
        self.trigger.start_drain(self.mode)
        self.stop.set()

    async def _drain(self) -> None:
        """Stop accepting -> drain until the deadline -> force."""
        assert self.mode is not None, "request_stop sets the mode before the stop event"
        graceful = self.mode is core_drain.DrainMode.GRACEFUL
        budget = self.options.drain_timeout if graceful else IMMEDIATE_GRACE
        deadline = time.monotonic() + budget
        queued = sum(lst.close() for lst in self.ctx.listeners)
        self.log.info("worker draining", extra={"fields": {"mode": self.mode.value,
                                                           "deadline_s": budget, "queued": queued}})
        try:
            async with asyncio.timeout(budget):
                await self.app.drain(deadline)
                if graceful:
                    await asyncio.gather(*(lst.wait_idle() for lst in self.ctx.listeners))
                    await self.trigger.start_drain_and_wait(self.mode)
        except TimeoutError:
            pass
        except Exception:
            self.log.exception("app drain failed")
        aborted = sum(lst.abort_all() for lst in self.ctx.listeners)
        if aborted:
            self.log.warning("drain deadline passed; closed open connections",
                             extra={"fields": {"aborted": aborted}})
        await asyncio.sleep(0)   # let aborts reach the transports
