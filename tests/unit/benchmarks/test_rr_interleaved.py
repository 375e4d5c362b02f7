"""The ztunnel load run's request/response measurement (benchmarks/load/ztunnel.py
`rr_interleaved`) against real local echo servers: each path's blocks take
turns with the other paths', a path's CPU is counted only in its own blocks,
and the untimed warm-up requests are not in the figures."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from shoal.benchmarks.load import ztunnel as Z

RATE = 400          # req/s per path: 4 connections at 100 req/s
SECONDS = 0.6       # per path in all
BLOCKS = 3


# CPU the measured path's echo burns per request: 0.12 s over the path's
# blocks, so its CPU figure stays well clear of /proc's 10 ms tick (a
# measurement of the client alone, a few ticks, once read 0).
BURN_S = 0.0005


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


async def _echo_server(arrivals: list[float], burn: float = 0.0) -> tuple[asyncio.AbstractServer, int]:
    """A 1 KB echo that notes when each request arrives (and burns `burn` s of CPU)."""
    async def handle(reader, writer):
        try:
            while True:
                data = await reader.readexactly(1024)
                arrivals.append(time.monotonic())
                _burn(burn)
                writer.write(data)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _blocks(times: list[float], others: list[float]) -> int:
    """How many runs of consecutive arrivals `times` forms when merged with `others`."""
    merged = sorted([(t, 0) for t in times] + [(t, 1) for t in others])
    return sum(1 for i, (_, who) in enumerate(merged)
               if who == 0 and (i == 0 or merged[i - 1][1] == 1))


def test_paths_take_turns_and_count_only_their_requests():
    async def main():
        arrivals: dict[str, list[float]] = {"a": [], "b": []}
        servers = {name: await _echo_server(arrivals[name], BURN_S if name == "a" else 0.0)
                   for name in arrivals}
        me = [os.getpid()]
        paths = {"a": Z.RrPath("127.0.0.1", servers["a"][1], None, (me, me)),
                 "b": Z.RrPath("127.0.0.1", servers["b"][1])}
        try:
            out = await Z.rr_interleaved(paths, RATE, SECONDS, BLOCKS)
        finally:
            for server, _ in servers.values():
                server.close()
        return out, arrivals
    out, arrivals = asyncio.run(main())
    # Each path's requests came in BLOCKS separate runs, the other path's between.
    assert _blocks(arrivals["a"], arrivals["b"]) == BLOCKS
    assert _blocks(arrivals["b"], arrivals["a"]) == BLOCKS
    for name in ("a", "b"):
        r = out[name]
        timed = RATE * SECONDS
        # Timed requests only: the server also saw one warm-up request per
        # connection and RR_WARMUP's worth before each block.
        warmup = Z.RR_CONNS + BLOCKS * RATE * Z.RR_WARMUP
        assert timed * 0.8 <= r["requests"] <= timed + Z.RR_CONNS
        assert len(arrivals[name]) == pytest.approx(r["requests"] + warmup, rel=0.1)
        assert r["rps"] == pytest.approx(RATE, rel=0.2)
        assert 0 < r["p50_ms"] <= r["p99_ms"]
    # CPU only where pids were given, over that path's own blocks: at least
    # the echo's burn (0.2 vCPU, less a tick per block read), all in this process.
    assert "vcpu_client_side" not in out["b"]
    a = out["a"]
    assert 0.1 <= a["vcpu_client_side"] <= 1.0
    # Both sides are this process, read one after the other: equal but for a
    # tick landing between the two reads (0.017 vCPU per block here).
    assert a["vcpu_server_side"] == pytest.approx(a["vcpu_client_side"], abs=0.1)


def test_turns_rotate_the_first_path_each_block():
    assert list(Z.turns(["a", "b", "c"], 4)) == list("abc" "bca" "cab" "abc")


def test_latency_ms_reads_p50_and_p99_of_the_sorted_latencies():
    lat = [i / 1000 for i in range(100, 0, -1)]          # 100 ms .. 1 ms, unsorted
    assert Z.latency_ms(lat) == pytest.approx({"p50_ms": 51.0, "p99_ms": 100.0})
