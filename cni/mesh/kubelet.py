"""The local mesh's kubelet: `shoal mesh kubelet`, one daemon per mesh.

In a cluster the kubelet restarts a dead container (CrashLoopBackOff) and
reports the real state of each one. The local mesh has no kubelet, so this
daemon plays that part for every process `shoal mesh` started: the control
plane, each node's agent and ztunnel, and the containers of every pod
(waypoint replicas included).

Each pass (every POLL_S, so `shoal mesh status` is true within a second):
- take the run dir's state lock (the `shoal mesh` commands hold it while they
  change the mesh, so a pod being deleted is never "restarted");
- a component whose process is gone (procs.running: the recorded pid, or the
  supervisor in its pidfile after a SIGUSR2 upgrade) has what is left of its
  process group killed (draining workers would otherwise linger as orphans)
  and is started again with the same argv once its backoff allows;
- restarts, the last exit and the next restart time go to state["kubelet"],
  which `shoal mesh status` shows;
- for each ztunnel it keeps a standby (shards/standby.py): the same command,
  loaded and waiting. A dead ztunnel is replaced by sending it GO, so the
  restart costs the supervisor's boot, not a Python start and its imports
  (the bulk of the time to serve again, and several seconds on a loaded
  machine). The next standby starts once the new ztunnel has settled.

Components run in their own sessions, so they outlive the kubelet (as
containers outlive a kubelet restart); `shoal mesh status` shows whether the
kubelet itself runs, and `shoal mesh up` / `down` start and stop it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

from shoal.cni.mesh import procs
from shoal.cni.mesh.procs import ProcRecord
from shoal.core import log as core_log
from shoal.shards import standby

LOG = core_log.get("kubelet")

# How often the kubelet looks: `mesh status` must be true within 1 s, and a
# dead component serving again within 2 s (a ztunnel boots in ~1 s).
POLL_S = 0.1
# Restart delays: the first at once (a kill -9 costs no extra time), then
# doubling up to the cap, like the kubelet's CrashLoopBackOff (10 s .. 5 min)
# scaled down for a local mesh.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# Running this long resets a component's crash streak.
STABLE_AFTER_S = 10.0
# How long a dead component's leftovers (draining workers, its config
# watcher) get to vanish after SIGKILL before the restart: a ztunnel
# restarted from a standby boots at once, and its cleanup of the dead one's
# metrics directory skips a directory that a live worker still holds.
GROUP_GONE_WAIT_S = 1.0
# Components that get a standby: the shards proxies (shards/standby.py).
STANDBY_PREFIXES = ("ztunnel/",)
# A standby starts this long after its component did, not while the
# component boots: its imports would take the CPU the boot needs.
STANDBY_AFTER_S = 3.0


def backoff(streak: int) -> float:
    """Delay before restart number `streak` of a crash streak (1-based)."""
    if streak <= 1:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (streak - 2))


def reap() -> None:
    """Collect exited children (components this kubelet restarted): no zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def supervised(state: dict) -> dict[str, dict]:
    """Every process record the kubelet looks after, by name."""
    out = dict(state.get("procs", {}))
    for pod in state.get("pods", {}).values():
        for rec in pod.get("procs", []):
            out[rec["name"]] = rec
    return out


def wants_standby(name: str) -> bool:
    return name.startswith(STANDBY_PREFIXES)


def replace_record(state: dict, new: ProcRecord) -> None:
    if new.name in state.get("procs", {}):
        state["procs"][new.name] = new.to_json()
        return
    for pod in state.get("pods", {}).values():
        recs = pod.get("procs", [])
        for i, rec in enumerate(recs):
            if rec["name"] == new.name:
                recs[i] = new.to_json()
                return


class Kubelet:
    """Args: mesh: a cni.mesh.mesh.Mesh on the run dir."""

    def __init__(self, mesh) -> None:
        self.mesh = mesh
        self._stop = False

    def run(self) -> int:
        core_log.setup()
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stop", True))
        while not self._stop:
            if not os.path.exists(self.mesh.state_path):
                return 0   # `mesh down` removed the mesh
            with self.mesh.locked(blocking=False) as got:
                if got and self.mesh.load():
                    self.step()
            reap()
            time.sleep(POLL_S)
        return 0

    def step(self) -> None:
        """One pass over every component (the lock is held, state loaded)."""
        state = self.mesh.state
        status = state.setdefault("kubelet", {})
        now_wall = time.time()
        changed = False
        for name, raw in supervised(state).items():
            rec = ProcRecord.from_json(raw)
            st = status.setdefault(name, {"restarts": 0, "streak": 0, "state": "running"})
            if procs.running(rec):
                if st["state"] != "running":
                    st["state"], changed = "running", True
                if st["streak"] and now_wall - st.get("started_at", now_wall) >= STABLE_AFTER_S:
                    st["streak"], changed = 0, True
                if "started_at" not in st and "seen_at" not in st:
                    st["seen_at"], changed = now_wall, True   # kept: each pass reloads the state
                since = st.get("started_at") or st["seen_at"]
                if wants_standby(name) and now_wall - since >= STANDBY_AFTER_S:
                    changed |= self.keep_standby(rec)
                continue
            if st["state"] == "running":   # just died: clear its leftovers, plan the restart
                procs.kill_group(rec, wait=GROUP_GONE_WAIT_S)
                st["streak"] += 1
                st["state"] = "backoff"
                st["last_exit_at"] = now_wall
                st["restart_at"] = now_wall + backoff(st["streak"])
                changed = True
                LOG.warning("component exited", extra={"fields": {
                    "component": name, "pid": rec.pid, "streak": st["streak"],
                    "restart_in_s": round(st["restart_at"] - now_wall, 2)}})
            if now_wall >= st["restart_at"]:
                new, how = self.activate_standby(rec), "standby"
                if new is None:
                    new, how = procs.respawn(rec), "new process"
                replace_record(state, new)
                LOG.info("component restarted", extra={"fields": {
                    "component": name, "pid": new.pid, "restarts": st["restarts"] + 1, "as": how,
                    "down_s": round(time.time() - st["last_exit_at"], 3)}})
                st.update(state="running", restarts=st["restarts"] + 1, started_at=now_wall)
                st.pop("restart_at", None)
                changed = True
        for name in set(status) - set(supervised(state)):
            del status[name]   # deleted pods, stopped components
            changed = True
        if changed:
            self.mesh.save()

    # -- standbys ----------------------------------------------------------------

    def keep_standby(self, rec: ProcRecord) -> bool:
        """Start a standby for `rec` unless one runs; True if the state changed."""
        standbys = self.mesh.state.setdefault("standby", {})
        raw = standbys.get(rec.name)
        if raw:
            sb = ProcRecord.from_json(raw)
            since = procs.serving_since(rec)
            if procs.running(sb) and (since is None or sb.start >= since):
                return False
            # Gone, or older than the component: a SIGUSR2 upgrade brought new
            # code, which the standby loaded before it was installed.
            procs.kill_group(sb)
        sb = procs.respawn(dataclasses.replace(rec, env={**rec.env, standby.ENV: "1"}))
        standbys[rec.name] = sb.to_json()
        return True

    def activate_standby(self, rec: ProcRecord) -> ProcRecord | None:
        """Send GO to `rec`'s standby if it is ready for it; the record of the
        component it now is, or None (no standby: start a new process)."""
        raw = self.mesh.state.get("standby", {}).pop(rec.name, None)
        if raw is None:
            return None
        sb = ProcRecord.from_json(raw)
        same = sb.argv == rec.argv and sb.env == {**rec.env, standby.ENV: "1"}
        if not (same and procs.running(sb) and standby.ready(sb.pid)):
            procs.kill_group(sb)   # still importing, or for another command line
            return None
        os.kill(sb.pid, standby.GO)
        return dataclasses.replace(sb, env=rec.env)
