"""A standby proxy: loaded, waiting to take over.

A process started with `ENV` set (non-empty) runs the command line as usual
up to the point where the supervisor would start (interpreter, imports, the
app built from its options), then waits for `GO`. Whoever restarts a dead
proxy (the local mesh's kubelet, cni/mesh/kubelet.py) keeps one ready and
sends `GO` instead of starting a new process, so a restart costs the
supervisor's boot alone, not the interpreter and the imports (~0.6 s of CPU,
several seconds on a loaded machine). Light on purpose: the kubelet imports
it, not the supervisor.
"""

from __future__ import annotations

import os
import signal

ENV = "SHOAL_STANDBY"
GO = signal.SIGUSR1


def preload() -> None:
    """What every worker imports after the fork: loaded by the standby."""
    import uvloop  # noqa: F401


def await_go() -> None:
    """Block until GO. The handler goes in first, so a GO sent at any time
    from then on is caught (the wakeup fd carries it to the read: no race
    between a check and a wait); before that a GO would kill the process,
    which is why a sender waits for `ready`. Leaves GO at its default."""
    r, w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(w, False)
    old = signal.set_wakeup_fd(w)
    signal.signal(GO, lambda *_: None)
    try:
        while os.read(r, 1) != bytes([GO]):
            pass
    finally:
        signal.signal(GO, signal.SIG_DFL)
        signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)


def ready(pid: int) -> bool:
    """The standby `pid` waits for GO: it catches GO (/proc/<pid>/status
    SigCgt), so a GO sent now cannot be lost or kill it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (GO - 1) & 1)
    except (OSError, ValueError):
        pass
    return False
