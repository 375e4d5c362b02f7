"""SIGUSR2: hand the listeners to a new supervisor binary (no connection lost).

As gunicorn's `reexec`: the old supervisor forks, and the child execs the
same command line with the listener fds inherited and named in
`SHOAL_LISTEN_FDS` (shards/handoff.py), plus the write end of a pipe in
`SHOAL_UPGRADE_READY_FD`. The new supervisor starts its workers on those
listeners and writes "1" on the pipe once every slot is ready; only then does
the old one drain and exit. If the new one exits first, the old one keeps
serving.

Both sides live here: `Upgrade` (the old supervisor's view of the child) and
`Inherited` (what a new supervisor finds in its environment).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from shoal.shards.handoff import (ENV_LISTEN_FDS, ENV_UPGRADE_READY_FD, decode_listen_fds,
                                  encode_listen_fds)
from shoal.shards.proc import _exit, _readable, describe_status
from shoal.shards.signals import reset_in_child

# The exit code of a forked child whose exec failed (as a shell's "not found").
EXEC_FAILED = 127

SlotSockets = dict[int, dict[str, socket.socket]]


@dataclass(slots=True, kw_only=True)
class Inherited:
    """A new supervisor's inheritance from the one that exec'ed it."""
    slot_socks: SlotSockets
    ready_fd: int | None       # write "1" here once ready; None: not an upgrade

    @classmethod
    def from_environ(cls, log: logging.Logger) -> "Inherited":
        """Take (and remove) the handoff variables, so our children do not see them."""
        socks: SlotSockets = {}
        listen = os.environ.pop(ENV_LISTEN_FDS, None)
        if listen:
            try:
                socks = decode_listen_fds(listen)
            except ValueError as e:
                log.error(str(e))
        ready = os.environ.pop(ENV_UPGRADE_READY_FD, None)
        return cls(slot_socks=socks, ready_fd=int(ready) if ready and ready.isdigit() else None)

    def announce_ready(self) -> None:
        """Tell the old supervisor to drain (once, when every slot is ready)."""
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, b"1")
        except OSError:
            pass        # the old one is gone already: nobody to tell
        os.close(self.ready_fd)
        self.ready_fd = None


@dataclass(slots=True, kw_only=True, eq=False)
class Upgrade:
    """The old supervisor's handle on the new one it started."""
    pid: int
    ready_fd: int
    log: logging.Logger
    done: bool = False

    @classmethod
    def start(cls, slot_socks: SlotSockets, *, cwd: str, close_in_child: Callable[[], None],
              log: logging.Logger, inherit_fds: Sequence[int] = ()) -> "Upgrade":
        """Fork and exec the same command line with the listeners (and
        `inherit_fds`, e.g. the certificate store) inherited. The environment
        passes on as it is: the new supervisor adopts the metrics dir and the
        certificate store named there."""
        rfd, wfd = os.pipe()
        listen = encode_listen_fds(slot_socks)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(rfd)
                env = dict(os.environ, **{ENV_LISTEN_FDS: listen, ENV_UPGRADE_READY_FD: str(wfd)})
                for fd in inherit_fds:
                    os.set_inheritable(fd, True)
                for socks in slot_socks.values():
                    for sock in socks.values():
                        os.set_inheritable(sock.fileno(), True)
                os.set_inheritable(wfd, True)
                close_in_child()
                reset_in_child()
                os.chdir(cwd)
                os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                _exit(EXEC_FAILED)
        os.close(wfd)
        os.set_blocking(rfd, False)
        log.info("upgrading: started a new supervisor", extra={"fields": {"new_pid": pid}})
        return cls(pid=pid, ready_fd=rfd, log=log)

    def progress(self) -> bool | None:
        """The ready pipe is readable: True when the new supervisor is ready,
        False when it failed, None when there is nothing to read yet."""
        try:
            data = os.read(self.ready_fd, 16)
        except BlockingIOError:
            return None
        os.close(self.ready_fd)
        self.done = True
        if data.startswith(b"1"):
            self.log.info("new supervisor ready; draining the old workers",
                          extra={"fields": {"new_pid": self.pid}})
            return True
        self.log.error("upgrade failed: the new supervisor exited before it was ready; "
                       "still serving with this one", extra={"fields": {"new_pid": self.pid}})
        return False

    def exited(self, status: int) -> bool:
        """The new supervisor was reaped. Returns True if it had said ready
        just before (the pipe still held its "1")."""
        ready = False
        if not self.done and _readable(self.ready_fd):
            ready = self.progress() is True
        if not self.done:
            os.close(self.ready_fd)
            self.done = True
            self.log.error("upgrade failed: the new supervisor exited before it was ready",
                           extra={"fields": {"new_pid": self.pid, "status": describe_status(status)}})
        return ready

    def close_in_child(self) -> None:
        if not self.done:
            try:
                os.close(self.ready_fd)
            except OSError:
                pass
