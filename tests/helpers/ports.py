"""One picker of free TCP ports for every test helper.

A test that starts a process must name its ports before the process binds
them, so between the pick and the bind nothing holds the port. Three things
could take it in that window, and each has its answer here:
- a client connection's source port: ports are picked below the kernel's
  ephemeral range, which the kernel never hands out as source ports;
- another pytest-xdist worker of the same run picking the same number:
  each worker walks a slice of the range of its own;
- the same process picking a number twice before binding it (a mesh names
  a dozen ports before starting anything): a worker walks its slice in
  order, so a number comes round again only after the whole slice.
Why it matters: shoal's listeners set SO_REUSEPORT, so two processes of the
same user that bind one port do not fail, they share it silently (and a
listener on 127.0.0.1 takes every loopback connection from one on the
wildcard address): a test then talks to another test's server.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

# The range starts well above the well-known and registered ports that the
# machine's own daemons (and the e2e tests' fixed ports: 15001, 15006,
# 15008, 15021, 15090...) use.
LOW_PORT = 16000
# The ports the tests' and load runs' apps listen on by number (a pod's
# port and its Service's targetPort are written into the mesh's config
# before anything starts). They lie inside the walk's range, so free_port
# skips them: a proxy listener given one on the wildcard address failed to
# bind next to the app on its pod address ("Address already in use"; about
# once in a few hundred meshes, one of a run's 15 picks landing there).
APP_PORT = 18080
SOAK_APP_PORT = 18090
FIXED_PORTS = frozenset({APP_PORT, SOAK_APP_PORT})
_FALLBACK_EPHEMERAL_LOW = 32768


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_LOW


def _slice() -> tuple[int, int]:
    """[low, high) of the ports this xdist worker (or this lone run) owns."""
    low, high = LOW_PORT, _ephemeral_low()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")        # "gw3"
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = (high - low) // max(count, 1)
    return low + index * size, low + (index + 1) * size


_LOW, _HIGH = _slice()
# Where this process starts its walk: runs in other checkouts on the same
# machine (not xdist siblings) then start apart.
_next = _LOW + (os.getpid() ^ time.monotonic_ns()) % (_HIGH - _LOW)
_lock = threading.Lock()


def free_port(host: str = "0.0.0.0") -> int:
    """A port nothing is bound to now, not handed out before by this process
    (until its slice wraps), and none of FIXED_PORTS."""
    global _next
    with _lock:
        for _ in range(_HIGH - _LOW):
            port = _next
            _next = _LOW if _next + 1 >= _HIGH else _next + 1
            if port in FIXED_PORTS:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port in [{_LOW}, {_HIGH})")


# /proc/net/tcp's state column for a listening socket (include/net/tcp_states.h).
_TCP_LISTEN = "0A"
# Between two looks at the socket tables while waiting for a listener.
_LISTEN_POLL = 0.05


def _hex_address(host: str) -> str:
    """`host` (IPv4) as /proc/net/tcp writes it: the 32-bit word in host order."""
    return "%08X" % int.from_bytes(socket.inet_aton(host), sys.byteorder)


def listening(host: str, port: int) -> bool:
    """Whether a TCP socket of this network namespace listens on host:port
    (or on the wildcard address, IPv4 or dual-stack IPv6).

    Read from /proc/net/tcp{,6} instead of connecting: a test connection to
    a proxy's front port is relayed to its backend, where it arrives later
    as a stray client (iperf3 -s takes it for a test of its own, or for one
    of the running test's data streams, and aborts that test)."""
    want = {f"{_hex_address(host)}:{port:04X}", f"00000000:{port:04X}",
            f"{'0' * 32}:{port:04X}"}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)                                     # the header line
                for line in f:
                    fields = line.split()
                    if fields[3] == _TCP_LISTEN and fields[1] in want:
                        return True
        except FileNotFoundError:                           # no IPv6 in this kernel
            continue
    return False


def wait_listening(host: str, port: int, timeout: float = 10.0, *,
                   exited=lambda: None) -> None:
    """Poll `listening(host, port)` without ever connecting.

    Raises:
        RuntimeError: `exited()` returned a message (the process died).
        TimeoutError: no listener within `timeout` s.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gone = exited()
        if gone:
            raise RuntimeError(gone)
        if listening(host, port):
            return
        time.sleep(_LISTEN_POLL)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
