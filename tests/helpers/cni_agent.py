"""Run the real node agent and the fake ztunnel as processes for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import orjson
from tests.helpers.wait import wait_for

from shoal.cni.binary import plugin_dir, plugin_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The standard plugins, then the built shoal-cni binary (package data).
CNI_PATH = f"/usr/lib/cni:{plugin_dir()}"
PLUGIN = plugin_path()


class Proc:
    def __init__(self, args, log_path):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": ROOT})

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.log.close()

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def run_plugin(env: dict, stdin: bytes, binary: str = PLUGIN) -> tuple[int, bytes]:
    """Execute the plugin binary as a runtime does: (exit status, stdout)."""
    r = subprocess.run([binary], input=stdin, env=env, capture_output=True, timeout=30)
    return r.returncode, r.stdout


def start_agent(run_dir, config_dir, *, require_ztunnel=True, extra=()) -> Proc:
    sock = os.path.join(run_dir, "pluginevent.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    args = [sys.executable, "-m", "shoal.cli", "node-agent", "run", "--node", "node-1",
            "--config", config_dir, "--socket", sock,
            "--zds-socket", os.path.join(run_dir, "ztunnel.sock"),
            "--require-ztunnel" if require_ztunnel else "--no-require-ztunnel", *extra]
    p = Proc(args, os.path.join(run_dir, "agent.log"))
    wait_for(lambda: os.path.exists(sock) or p.p.poll() is not None, what="agent socket")
    assert p.p.poll() is None, p.output()
    return p


def start_fake_ztunnel(run_dir) -> tuple[Proc, str]:
    events = os.path.join(run_dir, "ztunnel-events.jsonl")
    p = Proc([sys.executable, "-m", "tests.helpers.cni_fake_ztunnel",
              os.path.join(run_dir, "ztunnel.sock"), events], os.path.join(run_dir, "ztunnel.log"))
    return p, events


def events(path) -> list[dict]:
    try:
        with open(path, "rb") as f:
            return [orjson.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def agent_state(run_dir) -> dict:
    with open(os.path.join(run_dir, "state.json"), "rb") as f:
        return orjson.loads(f.read())
