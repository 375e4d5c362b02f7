"""Processes of the local mesh: started detached, stopped by recorded id.

Each process runs in its own session (so `mesh up` can exit and a stop can
signal its whole group), logs to a file, and is recorded with its start time
from /proc: a stop only signals a pid whose start time still matches, so a
recycled pid is never hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field

# SIGTERM lets ztunnel/waypoint drain (their default drain is 5 s) and
# unlink their shared memory; past this we SIGKILL.
STOP_GRACE_S = 8.0
POLL_S = 0.05
# A SIGKILLed process is gone within milliseconds: look that often.
KILL_POLL_S = 0.005


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcRecord:
    name: str
    pid: int
    start: int          # /proc/<pid>/stat field 22 (start time in clock ticks)
    argv: tuple[str, ...]
    log: str
    # The supervisor's --pidfile (ztunnel): after a SIGUSR2 upgrade the
    # serving supervisor is no longer the recorded pid but the one in it.
    pidfile: str = ""
    # What it was started with beyond argv, so a restart is the same process.
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ProcRecord":
        return cls(name=d["name"], pid=d["pid"], start=d["start"], argv=tuple(d["argv"]), log=d["log"],
                   pidfile=d.get("pidfile", ""), env=dict(d.get("env", {})), cwd=d.get("cwd", ""))


def bytecode_env(run_dir: str) -> dict[str, str]:
    """Environment for the mesh's Python components: compiled bytecode kept in
    the run dir. With PYTHONDONTWRITEBYTECODE set (and no __pycache__ in a
    source checkout) every start compiled each shoal module again, ~30 % of a
    component's boot CPU; a container image ships its bytecode, the local mesh
    keeps it here (removed with the run dir), leaving the source tree clean."""
    return {"PYTHONPYCACHEPREFIX": os.path.join(run_dir, "pycache"),
            "PYTHONDONTWRITEBYTECODE": ""}     # empty: unset for Python


def _stat_full(pid: int | str) -> tuple[str, int, int] | None:
    """(state, process group, start time) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2:].split()
    return rest[0], int(rest[2]), int(rest[19])


def _stat(pid: int) -> tuple[str, int] | None:
    st = _stat_full(pid)
    return None if st is None else (st[0], st[2])


def members(rec: ProcRecord) -> list[int]:
    """Live processes of the record's process group started no earlier than it.

    The group outlives its leader: a ztunnel upgrade (SIGUSR2) starts a new
    supervisor as a child, which stays in the group after the old one exits.
    """
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _stat_full(name)
        if st and st[1] == rec.pid and st[2] >= rec.start and st[0] not in ("Z", "X"):
            out.append(int(name))
    return out


def alive(rec: ProcRecord) -> bool:
    """The process, or what it became (its group), is still running."""
    st = _stat(rec.pid)
    if st is not None and st[1] == rec.start and st[0] not in ("Z", "X"):
        return True
    return bool(members(rec))


def running(rec: ProcRecord) -> bool:
    """The component itself runs: the recorded process, or the supervisor named
    in its pidfile within the same process group (after SIGUSR2). Unlike
    `alive`, leftovers of a dead component (draining workers) do not count,
    so a kill -9 shows at once."""
    return serving_since(rec) is not None


def serving_since(rec: ProcRecord) -> int | None:
    """Start time (clock ticks) of the process that is the component now (see
    `running`): the recorded one, or after a SIGUSR2 upgrade the supervisor
    in its pidfile; None if none runs."""
    st = _stat(rec.pid)
    if st is not None and st[1] == rec.start and st[0] not in ("Z", "X"):
        return rec.start
    if not rec.pidfile:
        return None
    try:
        with open(rec.pidfile) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    full = _stat_full(pid) if pid else None
    if full and full[1] == rec.pid and full[2] >= rec.start and full[0] not in ("Z", "X"):
        return full[2]
    return None


def kill_group(rec: ProcRecord, wait: float = 0.0) -> None:
    """SIGKILL what is left of a dead component's process group, and wait up
    to `wait` s for it to be gone (a replacement then finds the locks and
    directories of the dead one free to clean up)."""
    _signal(rec, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while members(rec) and time.monotonic() < deadline:
        time.sleep(KILL_POLL_S)


def spawn(name: str, argv: list[str], log_path: str, *, netns: str | None = None,
          cwd: str | None = None, env: dict[str, str] | None = None, pidfile: str = "") -> ProcRecord:
    """Start `argv` (inside `netns` via `ip netns exec`, which also applies
    /etc/netns/<netns>/ files) in a new session, output to `log_path`."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             cwd=cwd or None, env={**os.environ, **(env or {})},
                             start_new_session=True)
    st = _stat(p.pid)
    return ProcRecord(name=name, pid=p.pid, start=st[1] if st else 0, argv=tuple(full), log=log_path,
                      pidfile=pidfile, env=dict(env or {}), cwd=cwd or "")


def respawn(rec: ProcRecord) -> ProcRecord:
    """Start a record's process again: same argv (netns included), env, cwd."""
    return spawn(rec.name, list(rec.argv), rec.log, cwd=rec.cwd or None, env=rec.env,
                 pidfile=rec.pidfile)


def stop(recs: list[ProcRecord], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM each process group, wait up to `grace`, then SIGKILL."""
    live = [r for r in recs if alive(r)]
    for r in live:
        _signal(r, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        time.sleep(POLL_S)
        live = [r for r in live if alive(r)]
    for r in live:
        _signal(r, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while any(alive(r) for r in live) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def _signal(rec: ProcRecord, sig: int) -> None:
    try:
        os.killpg(rec.pid, sig)      # the session leader's group: its children too
    except (ProcessLookupError, PermissionError):
        for pid in members(rec):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
