"""The C reading side of a piped TcpEnd (core/hbone/native/plain.c, TcpPump)
against TcpEnd.data_received, the pure-Python path it stands in for.

A TcpEnd (and ztunnel's CountingEnd, whose byte counts are the connection's
metrics) on a real socket pair, on asyncio's loop and on uvloop, with a sink
that takes or refuses what arrives, as core.pipe's push does. Each script
runs twice: with the pump (the C module on when the sink is set) and
without it; after every step both runs must agree on what the sink took,
what is queued for read() and its count, the reading pause, the byte count,
EOF, the error and what read() returned.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.hbone import fastpath
from shoal.core.pipe import READ_HIGH_WATER, TcpEnd
from shoal.ztunnel.proxy.inputs import CountingEnd
from tests.helpers.leaks import leaks
from tests.helpers.wait import until

pytestmark = pytest.mark.skipif(fastpath.native is None, reason="native path off (SHOAL_NATIVE=0)")

KB = 1024
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class Sink:
    """core.pipe's push stand-in: takes (True) or refuses (False) by mode."""

    def __init__(self) -> None:
        self.took = bytearray()
        self.mode = "take"
        self.calls = 0

    def __call__(self, data) -> bool:
        self.calls += 1
        if self.mode == "raise":
            raise ValueError("sink failed")
        if self.mode == "take":
            self.took += data
            return True
        return False


class Run:
    """One end on a socket pair; `app` is the peer's socket."""

    def __init__(self, pump: bool, kind: type[TcpEnd]) -> None:
        self.pump, self.kind = pump, kind
        self.sent = 0
        self.reads: list[bytes] = []

    async def start(self) -> None:
        self.app, mine = socket.socketpair()
        self.app.setblocking(False)
        _, self.end = await asyncio.get_running_loop().create_connection(self.kind, sock=mine)
        self.sink = self.make_sink()
        self.set_sink(self.sink)

    def make_sink(self) -> Sink:
        return Sink()

    def set_sink(self, sink) -> None:
        saved = fastpath.native
        if not self.pump:
            fastpath.native = None
        try:
            self.end.set_sink(sink)
        finally:
            fastpath.native = saved
        protocol = self.end.transport.get_protocol()
        assert (type(protocol).__name__ == "TcpPump") == (self.pump and sink is not None)

    def arrived(self) -> int:
        return len(self.sink.took) + self.end._queued + sum(map(len, self.reads))

    async def do(self, op) -> None:
        kind, arg = op
        end = self.end
        if kind == "send":
            payload = bytes((self.sent + i) % 251 for i in range(arg))
            await asyncio.get_running_loop().sock_sendall(self.app, payload)
            self.sent += arg
            await until(lambda: self.arrived() == self.sent or end._error is not None,
                        what=lambda: f"{self.sent} bytes at the end ({self.arrived()})")
        elif kind == "mode":
            self.sink.mode = arg
        elif kind == "read":
            self.reads.append(await end.read(arg))
        elif kind in ("pause_writing", "resume_writing"):
            getattr(end.transport.get_protocol(), kind)()   # the transport's call
        elif kind == "eof":
            self.app.shutdown(socket.SHUT_WR)
            await until(lambda: end._eof, what="EOF at the end")
        elif kind == "unsink":
            self.set_sink(None)
        elif kind == "resink":
            self.set_sink(self.sink)
        elif kind == "fail":
            # A sink that raises: the transport's fatal error closes the socket.
            self.sink.mode = "raise"
            self.app.send(b"x")
            await asyncio.wait_for(end.closed, 10)

    def snapshot(self) -> dict:
        end = self.end
        return {
            "took": bytes(self.sink.took),
            "queued": b"".join(end._chunks),
            "queued_count": end._queued,
            "paused": (end._paused, end.transport.is_reading() if not end.closed.done() else None),
            "can_write": end._can_write,
            "read_count": getattr(end, "bytes_read", None),
            "eof": end._eof,
            "error": type(end._error).__name__ if end._error is not None else None,
            "closed": end.closed.done(),
            "reads": [bytes(r) for r in self.reads],
        }

    def close(self) -> None:
        self.end.transport.close()
        self.app.close()


async def run_script(pump: bool, kind, ops, rig=None):
    """Each op of `ops` on a fresh `rig` (Run, or TcpRun for a real TCP
    connection); the end's state after every step."""
    run = (rig or Run)(pump, kind)
    await run.start()
    try:
        snaps = []
        for op in ops:
            await run.do(op)
            snaps.append(run.snapshot())
        return snaps
    finally:
        run.close()


def compare(loop: str, kind, ops, rig=None) -> None:
    """`ops` with the pump (`rig`'s, TcpPump for Run) and without: equal at every step."""
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        native = runner.run(run_script(True, kind, ops, rig))
        python = runner.run(run_script(False, kind, ops, rig))
    for i, (n, p) in enumerate(zip(native, python)):
        assert n == p, f"step {i} {ops[i]}: {sorted(k for k in n if n[k] != p[k])} differ"


# The scripts below (test_sized_reads runs them through core.pipe.SizedReads too).
TAKEN_REFUSED_OPS = [("send", KB), ("send", 1), ("mode", "refuse"), ("send", 100),
                     ("mode", "take"), ("send", 200), ("read", 50), ("read", 1000),
                     ("send", 3 * KB), ("send", 7)]
HIGH_WATER_OPS = [("mode", "refuse"), ("send", READ_HIGH_WATER // 2),
                  ("send", READ_HIGH_WATER // 2 + 1), ("read", READ_HIGH_WATER // 2),
                  ("read", READ_HIGH_WATER // 4), ("read", READ_HIGH_WATER), ("mode", "take"),
                  ("send", KB)]
CALLBACK_OPS = [("pause_writing", None), ("send", KB), ("resume_writing", None),
                ("unsink", None), ("send", 10), ("read", 100), ("resink", None), ("send", 20),
                ("eof", None), ("read", 100)]
FAIL_OPS = [("send", KB), ("fail", None)]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", [TcpEnd, CountingEnd])
def test_taken_refused_queued_and_read_in_order(loop, kind):
    """What the sink takes is counted; what it refuses queues, and later
    reads queue behind it (never overtaking), until read() empties it."""
    compare(loop, kind, TAKEN_REFUSED_OPS)


@pytest.mark.parametrize("loop", LOOPS)
def test_reading_pauses_at_the_high_water_mark_and_resumes(loop):
    compare(loop, CountingEnd, HIGH_WATER_OPS)


@pytest.mark.parametrize("loop", LOOPS)
def test_callbacks_eof_and_unsinking_are_the_ends(loop):
    """pause/resume of writing and EOF reach the TcpEnd through the pump;
    without a sink the end reads as before; a new sink brings the pump back."""
    compare(loop, CountingEnd, CALLBACK_OPS)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_failing_sink_closes_the_connection_as_python(loop):
    compare(loop, CountingEnd, FAIL_OPS)


def test_a_subclass_that_reads_its_own_way_keeps_its_protocol():
    class Own(TcpEnd):
        def data_received(self, data):
            TcpEnd.data_received(self, data)

    async def main():
        run = Run(False, Own)
        run.pump = False          # no pump for it even with the C module on
        await run.start()
        try:
            run.end.set_sink(Sink())
            assert run.end.transport.get_protocol() is run.end
        finally:
            run.close()
    asyncio.run(main())


def test_pump_leaks_no_references_or_memory():
    """Thousands of reads through TcpPump.data_received (taken and queued):
    the objects it touches keep their reference counts, no memory stays."""
    async def main():
        run = Run(True, CountingEnd)
        await run.start()
        try:
            end, sink = run.end, run.sink
            pump = end.transport.get_protocol()
            payload = b"p" * 100
            objs = [end, sink, end._chunks, end.transport, pump, payload]

            def batch():
                sink.took.clear()
                sink.mode = "take"
                for _ in range(100):
                    pump.data_received(payload)
                sink.mode = "refuse"
                for _ in range(100):
                    pump.data_received(payload)
                end._chunks.clear()
                end._queued = 0
            leaked, grown, counted = leaks(objs, batch, lambda: end.bytes_read)
            assert counted == 10 * 100 * len(payload)
            assert leaked == []
            assert grown < 64 * KB, f"{grown} bytes still allocated after 2000 reads"
        finally:
            run.close()
    asyncio.run(main())


def test_pump_checks_its_arguments():
    TcpPump = fastpath.native.TcpPump
    with pytest.raises(TypeError):
        TcpPump(object(), None, [], None, None)
    with pytest.raises(TypeError):
        TcpPump(object(), Sink(), [], None, 3)
    with pytest.raises(ValueError):
        TcpPump.__new__(TcpPump).data_received(b"x")


# Every protocol callback of a TcpPump that __init__ never ran (or that the
# GC cleared): each must raise, not dereference the missing end.
UNINITIALISED = """
from shoal.core.hbone import fastpath
TcpPump = fastpath.native.TcpPump
calls = [("data_received", b"x"), ("eof_received",), ("connection_lost", None),
         ("connection_lost", OSError("x")), ("pause_writing",), ("resume_writing",)]
for name, *args in calls:
    try:
        getattr(TcpPump.__new__(TcpPump), name)(*args)
    except ValueError as e:
        print(name, e)
"""


def test_an_uninitialised_pump_raises_from_every_callback():
    # In a child: the failure this guards against is a segfault.
    r = subprocess.run([sys.executable, "-c", UNINITIALISED], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == [
        f"{name} TcpPump not initialised" for name in
        ("data_received", "eof_received", "connection_lost", "connection_lost",
         "pause_writing", "resume_writing")]


# -- drawn scripts, on TCP --------------------------------------------------------

class TcpRun(Run):
    """A Run on a real TCP connection over loopback (as a ztunnel's ends),
    so the peer can also reset it (RST) and uvloop uses its TCP transport."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            accepted = loop.create_task(loop.sock_accept(listener))
            _, self.end = await loop.create_connection(self.kind, *listener.getsockname())
            self.app, _ = await asyncio.wait_for(accepted, 10)
        self.app.setblocking(False)
        self.sink = Sink()
        self.set_sink(self.sink)

    async def do(self, op) -> None:
        kind, arg = op
        end = self.end
        if kind == "read":
            # Only what is there (or EOF): an empty end would wait forever.
            if end._chunks or end._eof:
                try:
                    self.reads.append(await end.read(arg))
                except ConnectionError as e:
                    self.reads.append(type(e).__name__.encode())
        elif kind == "fail":
            # Only when the next bytes reach the sink (piped, nothing queued).
            if end._sink is not None and not end._chunks:
                await super().do(op)
        elif kind == "peer_close":
            self.app.close()
            await until(lambda: end._eof, 10, what="EOF at the end")
        elif kind == "peer_reset":
            self.app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.app.close()
            await asyncio.wait_for(end.closed, 10)
        elif kind == "abort":
            end.abort()
            await asyncio.wait_for(end.closed, 10)
        elif kind == "send":
            await asyncio.get_running_loop().sock_sendall(self.app, bytes(
                (self.sent + i) % 251 for i in range(arg)))
            self.sent += arg
            await until(lambda: self.arrived() == self.sent or end._error is not None, 10,
                        what=lambda: f"{self.sent} bytes at the end ({self.arrived()})",
                        interval=0.001)
        else:
            await super().do(op)

    def snapshot(self) -> dict:
        snap = super().snapshot()
        # How read() split what was queued depends on how the kernel handed
        # the bytes over; what was read, in order, does not.
        snap["reads"] = b"".join(snap["reads"])
        return snap

    def close(self) -> None:
        if not self.end.closed.done():
            self.end.transport.close()
        self.app.close()


# Sends stay small (one segment on loopback, so chunking is the same in both
# runs) and their total under READ_HIGH_WATER (the mark is the scripted
# test's: where a pause falls would depend on the kernel's chunking).
# (hypothesis draws mostly small integers: large sizes are also named)
SEND = st.tuples(st.just("send"), st.one_of(st.integers(1, 16 * KB),
                                            st.sampled_from((4 * KB, 9 * KB, 16 * KB))))
STEP = st.one_of(
    SEND, SEND,
    st.tuples(st.just("mode"), st.sampled_from(["take", "refuse"])),
    st.tuples(st.just("read"), st.integers(1, 64 * KB)),
    st.tuples(st.sampled_from(["pause_writing", "resume_writing", "unsink", "resink"]),
              st.none()))
LAST = st.tuples(st.sampled_from(["peer_close", "peer_reset", "abort", "fail"]), st.none())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loop=st.sampled_from(sorted(LOOPS)), kind=st.sampled_from([TcpEnd, CountingEnd]),
       steps=st.lists(STEP, max_size=12), last=st.lists(LAST, max_size=1),
       reads_after=st.booleans())
def test_drawn_scripts_on_tcp_same_as_python(loop, kind, steps, last, reads_after):
    """Scripts drawn by hypothesis (shrunk on failure) on a real TCP
    connection, ending with the peer's FIN or RST, a local abort or a
    failing sink: the pump's run and the Python one agree after every step."""
    ops = steps + last + ([("read", 64 * KB)] * 2 if reads_after else [])
    assert sum(arg for op, arg in ops if op == "send") < READ_HIGH_WATER
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        native = runner.run(run_script(True, kind, ops, TcpRun))
        python = runner.run(run_script(False, kind, ops, TcpRun))
    for i, (n, p) in enumerate(zip(native, python)):
        assert n == p, f"step {i} {ops[i]}: {sorted(k for k in n if n[k] != p[k])} differ"
