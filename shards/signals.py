"""Signals: handlers only enqueue; the supervisor loop dispatches by name.

gunicorn learnt this the hard way (commit b650332c): logging or reaping
inside a handler deadlocks. Here a handler puts the signal number on a
`SimpleQueue` and the interpreter's wakeup fd wakes the loop's `select`.
Tests reach the queue directly (`SignalQueue.put`), as uvicorn's do.
"""

from __future__ import annotations

import os
import queue
import signal

# What the supervisor handles, and the `handle_<name>` each maps to.
HANDLED: dict[signal.Signals, str] = {
    signal.SIGTERM: "term",
    signal.SIGINT: "int",
    signal.SIGQUIT: "quit",
    signal.SIGHUP: "hup",
    signal.SIGTTIN: "ttin",
    signal.SIGTTOU: "ttou",
    signal.SIGUSR2: "usr2",
    signal.SIGCHLD: "chld",
}


class SignalQueue:
    """Signal numbers in arrival order plus a pipe a `select` can wait on."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.rfd, self._wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self._wfd, False)

    def install(self) -> None:
        """Install the enqueueing handlers (main thread only)."""
        for sig in HANDLED:
            signal.signal(sig, self._handler)
            # Let system calls restart: the loop sees the signal via the fd.
            signal.siginterrupt(sig, False)
        signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)

    def _handler(self, signum: int, frame: object) -> None:
        self._queue.put(signum)

    def put(self, signum: int) -> None:
        """Enqueue as if the signal arrived (tests, internal requests)."""
        self._queue.put(signum)
        try:
            os.write(self._wfd, b"\0")
        except BlockingIOError:
            pass   # the loop is already going to wake up

    def drain(self) -> list[int]:
        """Everything queued so far; empties the wakeup pipe too."""
        try:
            while os.read(self.rfd, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        for fd in (self.rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass


def reset_in_child() -> None:
    """Post-fork: default dispositions, no wakeup fd (fork contract)."""
    signal.set_wakeup_fd(-1)
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
