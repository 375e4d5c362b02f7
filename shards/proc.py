"""Small process helpers for the supervisor (statuses, signals, pidfiles)."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"status {status}"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _exit(code: int) -> None:
    """Leave a forked child without running the parent's cleanup."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def write_pidfile(path: str | None) -> None:
    """Atomically write our pid (a reader never sees a half-written file)."""
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: str | None) -> None:
    """Remove it only if it is still ours (a SIGUSR2 successor rewrote it)."""
    try:
        if path and open(path).read().strip() == str(os.getpid()):
            os.unlink(path)
    except OSError:
        pass


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, as Envoy and ztunnel do: a
    proxy holds two sockets per proxied connection plus listeners per pod."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


# prctl(2) option: a signal the kernel sends us when our parent exits.
PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Linux: the kernel sends `sig` to this process when its parent dies (even
    by SIGKILL), so no child of a supervisor outlives it as an orphan."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass
