"""The C relay's large DATA frames in pieces (core/hbone/native/relay.c),
differentially against the pure-Python path, on the harness of
test_relay_differential (a real HboneConnection on real TLS 1.3, tunnels
piped to TcpEnds on real socket pairs, a raw client writing frames in TLS
records cut anywhere).

A frame of at least h2fast.DIRECT_BODY_MIN that is not whole in a read is
written to its plain socket piece by piece as it arrives. Once it is whole,
everything must be as on the Python path (which takes it when whole): the
bytes on every socket, both windows, the acknowledgements and the frames
sent, the guard, every count. While it is in flight the relay is ahead by
exactly the pieces it wrote. When a condition fails in the middle (the
plain side paused or closed, the tunnel reset, the sink dropped, the
connection draining), the rest goes to the Python path as a DATA frame of
its own: the bytes each tunnel delivers, in order, stay the same.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from h2.stream import StreamState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.hbone import fastpath, h2fast
from shoal.core.hbone.settings import HboneSettings
from tests.helpers.leaks import leaks
from tests.unit.hbone.test_relay_differential import (DATA, KB, PING, SETTINGS, SIDS, WINDOW_UPDATE,
                                                       Hook, Run, data, frame, random_frame)

pytestmark = pytest.mark.skipif(fastpath.native is None, reason="native path off (SHOAL_NATIVE=0)")

LARGE = h2fast.DIRECT_BODY_MIN
# Reads of the socket pairs until their transports have written everything:
# a step moves up to a few MiB, far more than a socket pair's buffer.
SETTLE_SPINS = 1000


async def settle(run: Run) -> dict:
    """The snapshot once every plain transport has written all it holds,
    with every frame the server sent meanwhile: each snapshot takes the
    frames sent since the last one, and a path whose plain transports take
    longer to drain snapshots more often (a PING's ACK, sent in the first,
    was lost from the C path's result and the runs differed)."""
    sent: list[bytes] = []
    for _ in range(SETTLE_SPINS):
        snap = run.snapshot()
        sent += snap["sent"]
        if all(e.transport is None or e.transport.is_closing()
               or not e.transport.get_write_buffer_size() for e in run.ends):
            snap["sent"] = sorted(sent)
            return snap
        await asyncio.sleep(0)
    raise AssertionError("the plain transports did not drain")


def records_for(frames: list[bytes], cuts: list[int]) -> list[int]:
    """Cut points: the given ones within the step's plaintext."""
    size = sum(map(len, frames))
    return sorted({c for c in cuts if 0 < c < size})


async def run_steps(relay: bool, steps, monkeypatch, settings=HboneSettings(), between=None):
    """Each step: (frames, cuts); every record in a read of its own.
    `between(run, i)` runs before step i. Snapshots after each step."""
    run = Run(relay, settings)
    await run.start(monkeypatch)
    run.drained = {sid: bytearray() for sid in SIDS}
    try:
        snaps = []
        for i, (frames, cuts) in enumerate(steps):
            if between is not None:
                between(run, i)
            run.write(frames, records_for(frames, cuts))
            run.deliver(False)
            snaps.append(await settle(run))
            rel = run.server._relay
            snaps[-1]["_relay"] = (rel.frames, rel.parts, rel.part_left) if rel else None
            snaps[-1]["_drained"] = {sid: bytes(b) for sid, b in run.drained.items()}
        return snaps
    finally:
        run.close()


def same(n: dict, p: dict) -> bool:
    """Equal snapshots, but for the relay's own counters (keys from `_`)."""
    return {k: v for k, v in n.items() if k[0] != "_"} == {k: v for k, v in p.items() if k[0] != "_"}


def diff(n: dict, p: dict) -> str:
    return str({k: (n[k], p[k]) for k in n if k[0] != "_" and n[k] != p[k]})[:2000]


def read_out(run: Run) -> None:
    """The reader takes what queued for read() on every tunnel, as read()
    does (acknowledged, the connection flushed)."""
    for s in run.streams:
        while s._chunks:
            chunk, fcl = s._chunks.popleft()
            run.drained[s.stream_id] += chunk
            s._core.acknowledge(s.stream_id, fcl)
    run.conn.flush()


def cut_everywhere(rnd: random.Random, frames: list[bytes], count: int) -> list[int]:
    size = sum(map(len, frames))
    return [rnd.randrange(1, size) for _ in range(count)]


async def test_large_frames_in_pieces_equal_the_python_path_once_whole(monkeypatch):
    """Large frames on the piped tunnels, cut into records anywhere (even
    inside a header), between small frames and control frames and a large
    frame for the tunnel without a sink (the Python path's body buffer):
    after every step, with all frames whole, both paths agree exactly."""
    rnd = random.Random(7)
    steps = []
    for i in range(6):
        frames = [data(1, LARGE, fill=i), data(3, 200 * KB, fill=i + 1), data(1, 10),
                  frame(PING, 0, 0, b"12345678"), data(5, 100 * KB, fill=i + 2),
                  data(3, 256 * KB - 1, fill=i + 3), frame(SETTINGS, 0, 0, b""),
                  data(1, LARGE + 1, fill=i + 4)]
        steps.append((frames, cut_everywhere(rnd, frames, 40)))
    native = await run_steps(True, steps, monkeypatch)
    python = await run_steps(False, steps, monkeypatch)
    for i, (n, p) in enumerate(zip(native, python)):
        assert same(n, p), f"step {i}: " + diff(n, p)
    frames, parts, left = native[-1]["_relay"]
    assert parts >= 6 and left == 0 and frames >= parts


async def test_in_flight_the_relay_is_ahead_by_the_pieces_it_wrote(monkeypatch):
    """A 256 KiB frame over three steps: while it is incomplete the plain
    socket has exactly the payload that arrived and the relay counts what is
    still to come; once whole, the two paths agree."""
    body = data(1, 256 * KB, fill=9)
    steps = [([body[:9 + 50 * KB]], [5, 9 + KB]), ([body[9 + 50 * KB:9 + 200 * KB]], [KB]),
             ([body[9 + 200 * KB:], data(3, 5)], [])]
    native = await run_steps(True, steps, monkeypatch)
    python = await run_steps(False, steps, monkeypatch)
    payload = body[9:]
    for i, arrived in ((0, 50 * KB), (1, 200 * KB)):
        assert native[i]["plain"][0] == payload[:arrived]
        assert python[i]["plain"][0] == b""
        assert native[i]["_relay"][2] == 256 * KB - arrived
        assert native[i]["ends"][0][0] == native[i]["pushed"][0][0] == arrived
    assert same(native[2], python[2]), diff(native[2], python[2])
    assert native[2]["plain"][0] == payload and native[2]["_relay"][2] == 0


# -- a condition failing in the middle of a frame --------------------------------

def _pause(run):
    run.ends[0].pause_writing()


def _resume_later(run):
    run.ends[0].pause_writing()
    run.ends[0].resume_writing()


def _close_plain(run):
    run.ends[0].transport.close()


def _reset_tunnel(run):
    run.streams[0].abort()


def _drop_sink(run):
    run.streams[0].set_sink(None)


def _drain(run):
    run.conn.start_drain()


def _delivered(snap: dict, i: int) -> bytes:
    """What tunnel `i` delivered: its socket's bytes, then what it queued
    (read out, then still queued)."""
    sid = SIDS[i]
    return snap["plain"][i] + snap["_drained"][sid] + b"".join(snap["queued"][sid][0])


def _totals(snap: dict) -> dict:
    """Each window's size plus its unacknowledged bytes: what the frames
    consumed minus what was acknowledged, however the WINDOW_UPDATEs fell.
    A closed stream's window is never used again, and the relay consumed
    it for the pieces it wrote before the reset (h2 consumes nothing on a
    closed stream): only open streams' are compared."""
    conn = snap["conn_window"]
    return {"conn": conn[0] + conn[2],
            **{sid: w[0] + w[2] for sid, (state, w) in snap["h2_streams"].items()
               if state is not StreamState.CLOSED}}


@pytest.mark.parametrize("action", [_pause, _resume_later, _close_plain, _reset_tunnel,
                                    _drop_sink, _drain])
async def test_a_condition_failing_mid_frame_hands_the_rest_to_python(action, monkeypatch):
    """The frame is half through when `action` happens; its rest arrives
    next. The relay hands the rest to the Python path as a DATA frame of
    its own: each tunnel delivers the same bytes in the same order (on its
    socket, then queued), the connection ends in the same state, and once
    the queued bytes are read every window has the same bytes outstanding."""
    body = data(1, 200 * KB, fill=3)
    steps = [([data(3, 10), body[:9 + 70 * KB]], [100, 9 + 20 * KB]),
             ([body[9 + 70 * KB:], data(1, 40 * KB, fill=5), data(3, 50 * KB)], [30 * KB, 99 * KB]),
             ([data(1, 7), data(3, 7)], [])]

    def between(run, i):
        if i == 1:
            action(run)
        if i == 2:
            read_out(run)
    native = await run_steps(True, steps, monkeypatch, between=between)
    python = await run_steps(False, steps, monkeypatch, between=between)
    assert native[0]["_relay"][2] == 130 * KB           # in flight when the action came
    assert native[1]["_relay"][2] == 0
    for n, p in zip(native[1:], python[1:]):
        assert n["conn"] == p["conn"] and n["h2_state"] == p["h2_state"]
        assert n["core"] == p["core"]
        for i in range(2):
            got, want = _delivered(n, i), _delivered(p, i)
            if action is _close_plain or action is _reset_tunnel:
                # written before the tunnel died: the Python path had none of it yet
                assert got.startswith(want) and len(got) - len(want) <= 70 * KB
            else:
                assert got == want
    assert _totals(native[2]) == _totals(python[2])


async def test_pieces_leak_no_references_or_memory(monkeypatch):
    """Hundreds of large frames relayed in pieces: the objects the relay
    touches keep their reference counts and no memory stays allocated."""
    run = Run(True, HboneSettings())
    await run.start(monkeypatch)
    try:
        objs = run.relay_objects()
        # (no more per batch than a socket pair's buffer holds: the batch
        # reads the socket without running the loop)
        frames = [data(1, 40 * KB, fill=i) for i in range(3)]
        want = b"".join(f[9:] for f in frames)

        def batch():
            run.write(frames, [k * 20 * KB + 3 for k in range(1, 7)])
            run.deliver(False)
            run.frames_sent()
            got = b""
            while len(got) < len(want):
                got += run.socks[0].recv(1 << 20)
            assert got == want
        leaked, grown, taken = leaks(objs, batch, lambda: run.server._relay.parts)
        assert taken == 3 * 10
        assert leaked == []
        assert grown < 64 * KB, f"{grown} bytes still allocated after 30 frames in pieces"
    finally:
        run.close()


async def test_a_write_that_reenters_the_relay_keeps_the_order(monkeypatch):
    """The plain transport's write delivers the next records to the same
    connection (a nested read): the nested feed() does nothing, the outer
    one goes on with what came, and the tunnel gets every byte in order."""
    run = Run(True, HboneSettings())
    await run.start(monkeypatch)
    try:
        frames = [data(1, 100 * KB, fill=1), data(1, 60 * KB, fill=2)]
        run.write(frames, [20 * KB, 50 * KB, 120 * KB])
        records, run.records = run.records, []
        later = records[1:]

        def on_write():
            while later:
                run.server.data_received(later.pop(0))
        end = run.ends[0]
        end.transport = Hook(end.transport, on_write)
        run.server.data_received(records[0])
        snap = await settle(run)
        assert snap["plain"][0] == b"".join(f[9:] for f in frames)
        assert run.server._relay.part_left == 0
    finally:
        run.close()


async def test_a_write_that_raises_leaves_data_received_in_both_paths(monkeypatch):
    """A plain transport whose write raises: the exception leaves
    data_received on the relay's first piece as on the Python path's whole
    frame (the event loop then closes the connection)."""
    for relay in (True, False):
        run = Run(relay, HboneSettings())
        await run.start(monkeypatch)
        try:
            end = run.ends[0]
            hook = Hook(end.transport, lambda: None)

            def boom(b):
                raise RuntimeError("write failed")
            hook.write = boom
            end.transport = hook
            run.write([data(1, 100 * KB)], [30 * KB])
            with pytest.raises(RuntimeError, match="write failed"):
                run.deliver(not relay)
        finally:
            run.close()


async def test_a_ping_acked_while_the_plain_side_drains_counts_on_both_paths(monkeypatch):
    """A PING before large frames, every frame a record: its ACK goes out
    while the plain transports still drain (the C path's settle snapshots
    more than once); the step's frames sent hold the ACK on both paths."""
    ping = frame(PING, 0, 0, b"\x83\x1fm\xfaz\xff\xce\x88")
    frames = [ping, data(1, 64 * KB), data(1, 64 * KB), data(1, 100 * KB)]
    ends = [0]
    for f in frames:
        ends.append(ends[-1] + len(f))
    native = await run_steps(True, [(frames, ends)], monkeypatch)
    python = await run_steps(False, [(frames, ends)], monkeypatch)
    assert same(native[0], python[0]), diff(native[0], python[0])
    ack = frame(PING, 1, 0, b"\x83\x1fm\xfaz\xff\xce\x88")
    assert ack in native[0]["sent"]


async def test_window_updates_and_frames_around_pieces(monkeypatch):
    """Small windows: the frames in pieces use them up, WINDOW_UPDATEs
    follow the acknowledgements exactly as on the Python path, and a frame
    over the stream's window goes to h2 (FLOW_CONTROL_ERROR) on both."""
    settings = HboneSettings(stream_window=65_535 * 2, connection_window=65_535 * 8,
                             max_frame_size=200 * KB)
    steps = [([data(1, 60 * KB), data(3, 60 * KB)], [10 * KB, 70 * KB]),
             ([data(1, 50 * KB), frame(WINDOW_UPDATE, 0, 0, b"\0\0\1\0")], [33 * KB]),
             ([data(3, 60 * KB), data(1, 40 * KB)], [5, 20 * KB, 90 * KB]),
             ([frame(DATA, 0, 1, b"x" * 150 * KB)], [40 * KB])]
    native = await run_steps(True, steps, monkeypatch, settings)
    python = await run_steps(False, steps, monkeypatch, settings)
    for i, (n, p) in enumerate(zip(native, python)):
        assert same(n, p), f"step {i}: " + diff(n, p)
    assert native[-1]["_relay"][1] >= 4
    assert "FLOW_CONTROL" in native[-1]["conn"][0].upper().replace(" ", "_")


# -- drawn scripts ---------------------------------------------------------------

# Large frames (in pieces when cut) between the random frames of
# test_relay_differential; with small windows some overrun them.
LARGE_SIZES = (LARGE, LARGE + 1, 64 * KB, 100 * KB + 3, 200 * KB, 256 * KB - 1)
BETWEEN = (None, read_out, _pause, lambda run: run.ends[0].resume_writing(),
           lambda run: run.ends[1].pause_writing())


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rnd=st.randoms(use_true_random=False), hostile=st.booleans(), small=st.booleans())
def test_pieces_drawn_by_hypothesis_same_as_python(rnd, hostile, small):
    """Scripts drawn (and shrunk) by hypothesis: large frames among random
    ones (hostile too), every frame in records of its own cut anywhere, each
    record a read; between steps the reader reads or a plain side pauses or
    resumes. With every frame whole after each step, both paths agree."""
    settings_ = (HboneSettings(stream_window=65_535 * 2, connection_window=65_535 * 6,
                               max_frame_size=256 * KB) if small else HboneSettings())
    steps, actions = [], []
    for _ in range(rnd.randrange(1, 6)):
        frames = [data(rnd.choice(SIDS), rnd.choice(LARGE_SIZES), fill=rnd.randrange(256))
                  if rnd.random() < 0.3 else random_frame(rnd, hostile)
                  for _ in range(rnd.randrange(1, 8))]
        size = sum(map(len, frames))
        ends = [0]
        for f in frames:
            ends.append(ends[-1] + len(f))
        cuts = [rnd.randrange(1, size) for _ in range(rnd.choice((0, 2, 10)))]
        steps.append((frames, cuts + ends))
        actions.append(rnd.choice(BETWEEN))

    def between(run, i):
        if actions[i] is not None:
            actions[i](run)

    async def both(mp):
        native = await run_steps(True, steps, mp, settings_, between)
        python = await run_steps(False, steps, mp, settings_, between)
        for i, (n, p) in enumerate(zip(native, python)):
            assert same(n, p), f"step {i}: " + diff(n, p)
    loop = asyncio.new_event_loop()
    try:
        with pytest.MonkeyPatch.context() as mp:
            loop.run_until_complete(both(mp))
    finally:
        loop.close()
