"""Real peer processes for HBONE integration tests (nghttpx, tinyproxy, shoal's
`core.hbone.tools`), each on ephemeral ports, killed by the fixture that made them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.ports import free_port, wait_listening

ROOT = Path(__file__).resolve().parents[2]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> None:
    """Poll until 127.0.0.1:port accepts (or the process died / deadline)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def wait_listener(port: int, proc: subprocess.Popen | None = None,
                  timeout: float = 10.0) -> None:
    """wait_port without connecting (tests.helpers.ports.listening): for a
    proxy's front port, where a probe would reach the backend as a stray
    client."""
    def exited() -> str | None:
        if proc is None or proc.poll() is None:
            return None
        return f"{proc.args[0]} exited with {proc.returncode}"
    wait_listening("127.0.0.1", port, timeout, exited=exited)


def start_shoal_tool(args: list[str], log: Path, *, command: list[str] | None = None,
                     cwd: Path = ROOT) -> tuple[subprocess.Popen, int]:
    """`python -m tests.helpers.hbone_tools ...` (or `command`, run in `cwd`);
    returns (process, listening port). `process.pids` lists every worker
    process (the tool's `--processes`), the process itself first."""
    out = open(log, "w")
    proc = subprocess.Popen([*(command or [sys.executable, "-m", "tests.helpers.hbone_tools"]),
                             *args], cwd=cwd, stdout=subprocess.PIPE, stderr=out, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"tool did not start: {line!r} {log.read_text()[-2000:]}")
    words = line.split()
    # Tools older than `--processes` print only the port.
    proc.pids = [int(p) for p in words[2].split(",")] if len(words) > 2 else [proc.pid]
    return proc, int(words[1])


def start_tinyproxy(tmp: Path, connect_port: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = tmp / f"tinyproxy-{port}.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n"
                    f"ConnectPort {connect_port}\nMaxClients 100\n")
    proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


def start_nghttpx(args: list[str], frontend_port: int, tmp: Path) -> subprocess.Popen:
    log = tmp / f"nghttpx-{frontend_port}.log"
    proc = subprocess.Popen(["nghttpx", "--conf=/dev/null", "--workers=1", "--no-ocsp",
                             f"--errorlog-file={log}", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(frontend_port, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def socket_owner(pids: list[int], local_port: int, remote_port: int) -> int | None:
    """Which of `pids` holds the TCP socket local_port <-> remote_port (e.g.
    which SO_REUSEPORT worker accepted a connection): /proc/net/tcp{,6}
    gives the socket's inode, /proc/<pid>/fd the process holding it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (int(local.rsplit(":", 1)[1], 16) == local_port
                    and int(remote.rsplit(":", 1)[1], 16) == remote_port and inode != "0"):
                inodes.add(f"socket:[{inode}]")
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue            # closed meanwhile
    return None
