"""Accept + echo + close cost per connection: shards (1 and 2 workers) vs bare uvloop.

The peer is a one-process uvloop `asyncio.start_server` echo with no
framework, in its own process; the ratio is the framework's per-connection
overhead (slot listener, Listener accept loop, metrics, drain tracking).

    .venv/bin/python -m pytest benchmarks/load/bench_shards_accept.py \
        -o python_files='bench_*.py' --benchmark-enable -p no:xdist
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.helpers.ports import free_port
from tests.helpers.shards_proc import PYTHON, ROOT, Shards
from tests.helpers.wait import wait_for

PEER = r"""
import asyncio, sys, uvloop
async def handle(r, w):
    while line := await r.readline():
        w.write(line); await w.drain()
    w.close()
async def main():
    s = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    print("ready", flush=True)
    await s.serve_forever()
uvloop.run(main())
"""


def one_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"ping\n")
        assert s.recv(64) == b"ping\n"


def _serving(port: int) -> bool:
    try:
        one_connection(port)
        return True
    except OSError:
        return False


@pytest.fixture(scope="module", params=["bare-uvloop", "shards-1", "shards-2"])
def target(request, tmp_path_factory):
    if request.param == "bare-uvloop":
        port = free_port()
        proc = subprocess.Popen([PYTHON, "-c", PEER, str(port)], cwd=ROOT, stdout=subprocess.PIPE)
        proc.stdout.readline()
        yield port
        proc.terminate()
        proc.wait(5)
        return
    s = Shards(workers=int(request.param[-1]), tmp=str(tmp_path_factory.mktemp("shards")),
               extra=["--log-level", "warning"])
    s.start()
    wait_for(lambda: _serving(s.echo), 5, "echo")
    yield s.echo
    s.stop()
    s.kill_all()


def test_connect_echo_close(benchmark, target):
    time.sleep(0.2)   # let the servers settle after start (benchmark noise only)
    benchmark(one_connection, target)
