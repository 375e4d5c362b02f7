"""Real peer programs for ztunnel tests and benchmarks: processes, ports, peers.

- `Proc`: a subprocess with a log file, stopped (TERM, then KILL) on `stop()`.
- `wait_port()`: wait for a listener (ports come from tests.helpers.ports);
  `wait_listener()` the same without connecting, for the peers' front ports
  and iperf3 -s (a probe would reach iperf3 as a stray test).
- iperf3 server/client, a haproxy pair (plaintext, two hops) and a stunnel
  pair (mutual TLS 1.3, two hops): the peers load_ztunnel.py compares with.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.pki import TestPKI, write_pem
from tests.helpers.ports import wait_listening

PROC_STOP_TIMEOUT = 5.0


def wait_port(host: str, port: int, timeout: float = 10.0, proc: "Proc | None" = None) -> None:
    """Poll until something accepts on host:port (raise with the log if not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.p.poll() is not None:
            raise RuntimeError(f"{proc.name} exited {proc.p.returncode}:\n{proc.tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s"
                       + (f"\n{proc.tail()}" if proc else ""))


def wait_listener(host: str, port: int, proc: "Proc", timeout: float = 10.0) -> None:
    """wait_port without a probe connection (tests.helpers.ports.listening):
    through a proxy pair, a probe reaches the backend (iperf3 -s) a moment
    later as a stray client, which can abort the run then under way."""
    def exited() -> str | None:
        if proc.p.poll() is None:
            return None
        return f"{proc.name} exited {proc.p.returncode}:\n{proc.tail()}"
    wait_listening(host, port, timeout, exited=exited)


class Proc:
    def __init__(self, name: str, cmd: list[str], logdir: Path, env: dict | None = None,
                 cwd: str | None = None) -> None:
        self.name = name
        self.log_path = Path(logdir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        full_env = {**os.environ, **(env or {})}
        self.p = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                  cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        # The group, even when its leader is gone: a supervisor started by
        # SIGUSR2 lives on in it after the old one exited.
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(PROC_STOP_TIMEOUT)
            deadline = time.monotonic() + PROC_STOP_TIMEOUT
            while time.monotonic() < deadline:
                os.killpg(self.p.pid, 0)       # raises once the whole group is gone
                time.sleep(0.05)
            os.killpg(self.p.pid, signal.SIGKILL)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(PROC_STOP_TIMEOUT)
        except ProcessLookupError:
            pass
        self._log.close()


def python_app(name: str, bind: str, logdir: Path) -> Proc:
    """The test app of tests/helpers/ztunnel_apps.py on `bind` (ip:port)."""
    root = str(Path(__file__).resolve().parents[2])
    proc = Proc(name, [sys.executable, "-m", "tests.helpers.ztunnel_apps", "serve",
                       "--bind", bind, "--name", name], logdir, cwd=root)
    host, port = bind.rsplit(":", 1)
    wait_port(host, int(port), proc=proc)
    return proc


def iperf3_server(host: str, port: int, logdir: Path) -> Proc:
    # --forceflush: its log is read while it runs (each test's lines, the
    # banner it logs when ready for the next one); a file is block-buffered.
    proc = Proc(f"iperf3-{port}", ["iperf3", "-s", "--forceflush", "-B", host, "-p", str(port)],
                logdir)
    wait_listener(host, port, proc)
    return proc


def iperf3_run(host: str, port: int, seconds: float = 3, *, reverse: bool = False,
               bind: str | None = None, parallel: int = 1) -> float:
    """One iperf3 client run; returns receiver Gbit/s."""
    cmd = ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J", "-P", str(parallel)]
    if reverse:
        cmd.append("-R")
    if bind:
        cmd += ["-B", bind]
    for _ in range(10):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
        data = json.loads(out.stdout)
        # iperf3 -s serves one test at a time; the last one may still be ending.
        if "busy" not in data.get("error", ""):
            break
        time.sleep(0.3)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def haproxy_pair(front: int, mid: int, backend: tuple[str, int], logdir: Path) -> list[Proc]:
    """Two chained haproxy TCP proxies: front -> mid -> backend (plaintext, two hops)."""
    cfg = Path(logdir) / "haproxy.cfg"
    cfg.write_text(f"""global
  maxconn 5000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend a
  bind 127.0.0.1:{front}
  default_backend to_b
backend to_b
  server b 127.0.0.1:{mid}
frontend b
  bind 127.0.0.1:{mid}
  default_backend app
backend app
  server app {backend[0]}:{backend[1]}
""")
    # One process per hop, like two nodes.
    procs = []
    for name, keep in (("haproxy-a", "a"), ("haproxy-b", "b")):
        text = cfg.read_text()
        part = Path(logdir) / f"{name}.cfg"
        if keep == "a":
            part.write_text(text.split("frontend b")[0])
        else:
            head = text.split("frontend a")[0]
            part.write_text(head + "frontend b" + text.split("frontend b")[1])
        procs.append(Proc(name, ["haproxy", "-f", str(part), "-db"], logdir))
    wait_listener("127.0.0.1", front, procs[0])
    wait_listener("127.0.0.1", mid, procs[1])
    return procs


def stunnel_pair(front: int, mid: int, backend: tuple[str, int], logdir: Path,
                 wrap: tuple[str, ...] = (), timeout: float = 10.0) -> list[Proc]:
    """Two stunnels with mutual TLS 1.3 between them (like two ztunnels, no
    HTTP/2); `wrap` goes before each command (e.g. valgrind's), `timeout` is
    how long each may take to listen."""
    pki = TestPKI()
    c = write_pem(pki.issue("spiffe://cluster.local/ns/bench/sa/client"), logdir, "st-client")
    s = write_pem(pki.issue("spiffe://cluster.local/ns/bench/sa/server"), logdir, "st-server")
    common = "foreground = yes\npid =\nsyslog = no\ndebug = 3\n"
    client = Path(logdir) / "stunnel-client.conf"
    client.write_text(common + f"""[c]
client = yes
accept = 127.0.0.1:{front}
connect = 127.0.0.1:{mid}
cert = {c.cert}
key = {c.key}
CAfile = {c.ca}
verifyChain = yes
sslVersionMin = TLSv1.3
""")
    server = Path(logdir) / "stunnel-server.conf"
    server.write_text(common + f"""[s]
accept = 127.0.0.1:{mid}
connect = {backend[0]}:{backend[1]}
cert = {s.cert}
key = {s.key}
CAfile = {s.ca}
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
""")
    procs = [Proc("stunnel-server", [*wrap, "stunnel4", str(server)], logdir),
             Proc("stunnel-client", [*wrap, "stunnel4", str(client)], logdir)]
    wait_listener("127.0.0.1", mid, procs[0], timeout)
    wait_listener("127.0.0.1", front, procs[1], timeout)
    return procs
