"""The config watcher child: the routing table's only writer.

The supervisor forks it next to the workers (DESIGN.md, Processes) and owns
nothing of its work: the child runs `routing.runtime.run_watcher` on the
table the supervisor created. Here is the bookkeeping of that one child:
start it, forward SIGHUP (re-read the config), and restart it with backoff
when it dies. Shards keep routing with the last table meanwhile, so a dead
watcher costs freshness, never traffic.

After each published generation the child writes a byte to its `published`
pipe; the supervisor waits on the read end and pushes "routing" to every
worker, so no worker polls the generation at a short interval.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable

from shoal.core import gcfreeze
from shoal.core import log as core_log
from shoal.shards import routing_glue
from shoal.shards.proc import _exit, _kill, describe_status, set_parent_death_signal
from shoal.shards.signals import reset_in_child

# A watcher that dies again soon after a restart waits longer each time:
# 0.2, 0.4, 0.8 ... s, at most WATCHER_BACKOFF_MAX (a config source that
# keeps crashing it must not spin a core).
WATCHER_BACKOFF_BASE = 0.2
WATCHER_BACKOFF_MAX = 10.0


class WatcherChild:
    """At most one watcher process, restarted with backoff.

    Args:
        config: the `--config` source (a directory or kubernetes://...).
        log_level: the level the child logs at.
        stable_after: a watcher up this long resets the backoff.
    """

    def __init__(self, config: str, *, log_level: str, stable_after: float,
                 log: logging.Logger) -> None:
        self.config = config
        self.log_level = log_level
        self.stable_after = stable_after
        self.log = log
        self.pid: int | None = None
        self.started = 0.0
        self.not_before = 0.0
        self.streak = 0
        # Made once, kept across restarts; non-blocking at both ends: a full
        # pipe already holds a wakeup the supervisor has not read.
        self.published_r, self.published_w = os.pipe()
        os.set_blocking(self.published_r, False)
        os.set_blocking(self.published_w, False)

    def due(self, now: float) -> bool:
        """No watcher runs and its backoff has passed."""
        return self.pid is None and now >= self.not_before

    def spawn(self, table_name: str, close_in_child: Callable[[], None]) -> None:
        pid = gcfreeze.fork()
        if pid == 0:
            code = 1
            try:
                close_in_child()
                reset_in_child()
                # Dies with the supervisor (even on kill -9): never an orphan writer.
                set_parent_death_signal(signal.SIGTERM)
                core_log.setup(self.log_level)
                os.close(self.published_r)
                routing_glue.run_watcher(self.config, table_name, self._announce)
                code = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                _exit(code)
        self.pid = pid
        self.started = time.monotonic()
        self.log.info("config watcher started", extra={"fields": {"watcher_pid": pid,
                                                                 "config": self.config}})

    def _announce(self) -> None:
        """In the child, after a publish: wake the supervisor."""
        try:
            os.write(self.published_w, b"g")
        except BlockingIOError:
            pass    # the pipe is full of wakeups not yet read: one more adds nothing

    def drain_published(self) -> bool:
        """Supervisor: read what the pipe holds; True if a publish was announced."""
        got = False
        while True:
            try:
                data = os.read(self.published_r, 4096)
            except (BlockingIOError, InterruptedError):
                return got
            if not data:
                return got
            got = True

    def close_pipe(self) -> None:
        """In a worker (post-fork) and at the supervisor's exit."""
        for fd in (self.published_r, self.published_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def send(self, sig: signal.Signals) -> None:
        if self.pid is not None:
            _kill(self.pid, sig)

    def exited(self, status: int, *, restart: bool) -> None:
        """Reaped: schedule the restart (with backoff) unless we are stopping."""
        self.pid = None
        if not restart:
            return
        now = time.monotonic()
        stable = now - self.started >= self.stable_after
        self.streak = 1 if stable else self.streak + 1
        delay = min(WATCHER_BACKOFF_MAX, WATCHER_BACKOFF_BASE * 2 ** (self.streak - 1))
        self.not_before = now + delay
        self.log.error("config watcher exited; workers keep the last table; restarting",
                       extra={"fields": {"status": describe_status(status), "restart_in_s": delay}})
