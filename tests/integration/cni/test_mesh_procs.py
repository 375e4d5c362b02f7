"""Mesh processes (cni/mesh/procs.py) with real processes: a kubelet restart
(`respawn`) starts the very same process, its environment and working
directory included (a pod's POD_NAME, SERVICE_ACCOUNT... and the bytecode
cache of the mesh's Python components)."""

import os
import signal

import orjson

from shoal.cni.mesh import procs
from shoal.cni.mesh.procs import ProcRecord
from tests.helpers.wait import wait_for


def test_respawn_keeps_argv_env_and_cwd(tmp_path):
    log = str(tmp_path / "logs" / "c.log")
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {"POD_NAME": "web-0", **procs.bytecode_env(str(tmp_path))}
    argv = ["sh", "-c", 'echo "$POD_NAME $PYTHONPYCACHEPREFIX [$PYTHONDONTWRITEBYTECODE] $(pwd)"; '
                        "exec sleep 60"]
    first = procs.spawn("amb/web-0/web", argv, log, cwd=str(workdir), env=env)
    # Through the state file, as the kubelet reads it.
    again = procs.respawn(ProcRecord.from_json(orjson.loads(orjson.dumps(first.to_json()))))
    try:
        assert again.pid != first.pid and again.env == env and again.cwd == str(workdir)
        want = f"web-0 {tmp_path}/pycache [] {workdir}"
        wait_for(lambda: open(log).read().splitlines() == [want, want], timeout=5,
                 what=lambda: f"both starts to print {want!r}: {open(log).read()!r}")
    finally:
        for r in (first, again):
            os.killpg(r.pid, signal.SIGKILL)
