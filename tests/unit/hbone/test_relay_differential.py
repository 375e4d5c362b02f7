"""An adversarial, differential test of the C receive relay (core/hbone/
native/relay.c) against the pure-Python path (SHOAL_NATIVE=0's).

The server is a real HboneConnection on real TLS 1.3 (in memory, as in
benchmarks/load/bench_hbone_tls.py) with tunnels piped (core.pipe's sink) to
TcpEnds on real socket pairs. After the tunnels are open, the client side is
raw: it writes arbitrary HTTP/2 frames (valid and hostile, seeded random), in
TLS records cut at arbitrary plaintext offsets, and reads what the server
sends back as frames. Each script runs twice: with the C relay, and with the
C module switched off entirely (fastpath.native = None). After every step
both runs must agree on the bytes on every plain socket, the bytes queued for
read(), the frames the server sent, both h2 inbound windows of every stream,
the flood guard, every byte count, the stream and connection states and the
connection's error; no exception may escape.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import ssl
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from h2.connection import ConnectionState
from h2.settings import SettingCodes
from h2.stream import StreamState

from shoal.benchmarks.load.bench_hbone_tls import MemoryTcp
from shoal.core.hbone import fastpath, tlsio
from shoal.core.hbone.connection import HboneConnection
from shoal.core.hbone.settings import HboneSettings
from shoal.core.identity.tls import client_context, server_context
from shoal.core.hbone.stream import HOLD_SEND_WINDOW, SIZED_HOLD_WINDOW
from shoal.core.pipe import SizedReads, TcpEnd, _counted
from tests.helpers.leaks import leaks
from tests.helpers.pki import TestPKI

pytestmark = pytest.mark.skipif(fastpath.native is None, reason="native path off (SHOAL_NATIVE=0)")

SERVER_ID = "spiffe://cluster.local/ns/t/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/t/sa/client"
KB = 1024
DATA, HEADERS, PRIORITY, RST, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 2, 3, 4, 6, 7, 8
END_STREAM, PADDED = 0x1, 0x8
TUNNELS = 3                 # opened before the raw part: stream ids 1, 3, 5
PIPED = (0, 1)              # of which these go to TcpEnds (the third queues for read())
_CONTEXTS: list = []


def contexts():
    """The client's and server's TLS contexts, made once (issuing is slow)."""
    if not _CONTEXTS:
        pki = TestPKI()
        _CONTEXTS.extend([client_context(pki.issue(CLIENT_ID)),
                          server_context(pki.issue(SERVER_ID))])
    return _CONTEXTS


def frame(kind: int, flags: int, sid: int, payload: bytes = b"", length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def data(sid: int, n: int, flags: int = 0, pad: int = 0, fill: int = 0x61) -> bytes:
    body = bytes((fill + i) % 256 for i in range(n))
    if flags & PADDED:
        body = bytes([pad]) + body + b"\0" * pad
    return frame(DATA, flags, sid, body)


class _Wire(MemoryTcp):
    """The bench harness's in-memory TCP, with a FIN (linger close) and a
    protocol the TLS layer may replace (its C TlsPump, tlspump.c)."""

    protocol = None

    def write_eof(self) -> None:
        self.closing = True

    def get_protocol(self):
        return self.protocol

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def read(self, data: bytes) -> None:
        """`data` arrives, as a loop that lends buffers delivers it: into
        the protocol's get_buffer(), then buffer_updated(n)."""
        while data:
            buf = self.protocol.get_buffer(-1)
            n = min(len(buf), len(data))
            assert n > 0
            buf[:n] = data[:n]
            self.protocol.buffer_updated(n)
            data = data[n:]


class Hook:
    """A TcpEnd's transport with a callback inside write (re-entrancy)."""

    def __init__(self, real, on_write) -> None:
        self._real, self.on_write = real, on_write

    def write(self, b) -> None:
        self._real.write(b)
        self.on_write()

    def __getattr__(self, name):
        return getattr(self._real, name)


class Run:
    """One server connection, tunnels open and piped, client side raw."""

    client_native = False          # the client's TLS on the C module too

    def __init__(self, relay: bool, settings: HboneSettings) -> None:
        self.relay, self.settings = relay, settings
        self.sent = bytearray()              # server → client plaintext not yet parsed

    async def start(self, monkeypatch) -> None:
        if not self.relay:
            monkeypatch.setattr(fastpath, "native", None)
        cctx, sctx = contexts()
        self.accepted: list = []

        def on_request(conn, stream, req):
            conn.core.accept(req.stream_id)
            conn.flush()
            self.accepted.append(stream)
        self.client_conn = HboneConnection(client=True, expected_identities=(SERVER_ID,))
        self.client = tlsio._TlsProtocol(cctx, server_side=False, app=self.client_conn,
                                         handshake_timeout=10)
        self.server = tlsio.server_protocol(
            sctx, lambda: HboneConnection(client=False, on_request=on_request,
                                          settings=self.settings),
            handshake_timeout=10, on_failure=lambda proto, exc: None)
        self.c_tcp, self.s_tcp = _Wire("client"), _Wire("server")
        self.s_tcp.protocol = self.server
        self.server.connection_made(self.s_tcp)
        # The raw client writes and reads through its ssl.SSLObject and
        # MemoryBIOs: it stays off the C module (whose Channel BIO replaces
        # them after the handshake) unless it is the side under test.
        native = fastpath.native
        if not self.client_native:
            fastpath.native = None
        try:
            self.client.connection_made(self.c_tcp)
        finally:
            fastpath.native = native
        self.pump()
        cs = [self.client_conn.open_stream(f"10.0.0.{i}:80") for i in range(TUNNELS)]
        self.pump()
        for c in cs:
            await c.wait_open()
        self.client_streams = cs
        monkeypatch.undo()
        assert (self.server._relay is not None) == self.relay
        # Reads go through the C TlsPump on the native path, the protocol's
        # own get_buffer/buffer_updated on the Python one.
        assert (type(self.s_tcp.protocol).__name__ == "TlsPump") == self.relay
        self.conn = self.server.app
        h2 = self.conn.core._h2
        # The flood guard's token buckets read the clock: make it the same in
        # both runs (a second per call: the buckets refill).
        ticks = iter(range(10**9))
        h2.guard.clock = lambda: float(next(ticks))
        h2.guard.limits = dataclasses.replace(h2.guard.limits, window_updates_per_data_frame=10**6)
        self.streams = list(self.accepted)
        self.ends, self.socks, self.pushed = [], [], []
        loop = asyncio.get_running_loop()
        for i in PIPED:
            mine, theirs = socket.socketpair()
            mine.setblocking(False)
            _, end = await loop.create_connection(TcpEnd, sock=theirs)
            pushed = [0, 0]
            self.streams[i].set_sink(_counted(end, pushed, 0))
            self.ends.append(end)
            self.socks.append(mine)
            self.pushed.append(pushed)
        self.plain = [bytearray() for _ in PIPED]
        self.s_tcp.out.clear()
        self.raw_client = self.client.sslobj

    def relay_objects(self) -> list:
        """What the C receive path (TlsPump, Relay.feed) touches on the
        first piped tunnel, for the leak tests."""
        conn, core = self.conn, self.conn.core
        h2 = core._h2
        hs, end = self.streams[0], self.ends[0]
        return [conn, core, h2, h2.guard, h2._inbound_flow_control_window_manager,
                h2.streams[1], h2.streams[1]._inbound_window_manager, h2.incoming_buffer,
                hs, hs._sink, hs._sink.native_target, end, end.transport, self.pushed[0],
                conn.streams, core._streams, h2.streams, core._streams[1], self.server._relay,
                self.s_tcp.protocol, self.server._chan,
                ConnectionState.SERVER_OPEN, StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL]

    def close(self) -> None:
        for end in self.ends:
            if end.transport is not None:
                end.transport.close()
        for s in self.socks:
            s.close()

    def pump(self) -> None:
        """Both sides' writes to the other until neither has any (set-up only)."""
        while self.c_tcp.out or self.s_tcp.out:
            for src, dst in ((self.c_tcp, self.server), (self.s_tcp, self.client)):
                if src.out:
                    b = b"".join(src.out)
                    src.out.clear()
                    dst.data_received(b)

    # -- the raw client ------------------------------------------------------

    def write(self, frames, cuts, per_frame: bool = False) -> None:
        """`frames` to the server as TLS records cut at the plaintext offsets
        `cuts` (and between frames if `per_frame`)."""
        plaintext = b"".join(frames)
        if per_frame:
            ends = [0]
            for f in frames:
                ends.append(ends[-1] + len(f))
            cuts = [*cuts, *ends]
        edges = [0, *sorted(c for c in cuts if 0 < c < len(plaintext)), len(plaintext)]
        records = []
        for a, b in zip(edges, edges[1:]):
            if b > a:
                self.raw_client.write(plaintext[a:b])
                records.append(self.client._out.read())
        self.records = records

    def deliver(self, together: bool) -> None:
        """The records to the server: in one read, or one read each."""
        if together:
            self.s_tcp.read(b"".join(self.records))
        else:
            for r in self.records:
                self.s_tcp.read(r)
        self.records = []

    def frames_sent(self) -> list[bytes]:
        """The whole frames the server sent since the last call."""
        ct = b"".join(self.s_tcp.out)
        self.s_tcp.out.clear()
        if ct:
            self.client._in.write(ct)
        while True:
            try:
                got = self.raw_client.read(1 << 20)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not got:
                break
            self.sent += got
        out, b = [], self.sent
        while len(b) >= 9:
            n = int.from_bytes(b[:3], "big")
            if len(b) < 9 + n:
                break
            out.append(bytes(b[:9 + n]))
            del b[:9 + n]
        return out

    def snapshot(self) -> dict:
        for i, s in enumerate(self.socks):
            while True:
                try:
                    got = s.recv(1 << 20)
                except (BlockingIOError, OSError):
                    break
                if not got:
                    break
                self.plain[i] += got
        conn, core = self.conn, self.conn.core
        h2 = core._h2
        g = h2.guard

        def wm(m):
            return (m.current_window_size, m.max_window_size, m._bytes_processed)
        return {
            "plain": [bytes(p) for p in self.plain],
            "ends": [(e.bytes_written, e.transport is None or e.transport.is_closing())
                     for e in self.ends],
            "pushed": [tuple(p) for p in self.pushed],
            "queued": {s.stream_id: ([bytes(d) for d, _ in s._chunks], [f for _, f in s._chunks],
                                     s.bytes_received, s._eof, str(s._error))
                       for s in self.streams},
            "sent": sorted(self.frames_sent()),
            "conn_window": wm(h2._inbound_flow_control_window_manager),
            "h2_streams": {sid: (st.state_machine.state, wm(st._inbound_window_manager))
                           for sid, st in h2.streams.items()},
            "h2_state": h2.state_machine.state,
            "h2_buffer": bytes(h2.incoming_buffer._data),
            "guard": (g.empty_in_a_row, g.outbound_control, g.data_frames_sent,
                      g.window_updates, g.streams_opened),
            "core": (core.dead, core.goaway_received,
                     sorted((sid, s.state) for sid, s in core._streams.items())),
            "conn": (str(conn.error), sorted(conn.streams), self.server.closing),
        }


async def run_script(relay: bool, script, settings, monkeypatch, hooks=None):
    """Run `script` (steps of (plaintext-builder, cuts, together)); the
    snapshot after each step, and how many frames C relayed."""
    run = Run(relay, settings)
    await run.start(monkeypatch)
    try:
        if hooks is not None:
            hooks(run)
        snaps = []
        for build, cuts, together in script:
            frames = build(run)
            run.write(frames, cuts, per_frame=not together)
            run.deliver(together)
            await asyncio.sleep(0)            # the loop runs the transports' callbacks
            await asyncio.sleep(0)
            snaps.append(run.snapshot())
        return snaps, (run.server._relay.frames if run.server._relay is not None else 0)
    finally:
        run.close()


async def compare_snaps(script, monkeypatch, settings=HboneSettings(), hooks=None):
    """Both runs, equal at every step: the frames C relayed and the snapshots."""
    native, frames = await run_script(True, script, settings, monkeypatch, hooks)
    python, none = await run_script(False, script, settings, monkeypatch, hooks)
    assert none == 0
    for i, (n, p) in enumerate(zip(native, python)):
        assert n == p, f"step {i}: {sorted(k for k in n if n[k] != p[k])} differ: " + \
            str({k: (n[k], p[k]) for k in n if n[k] != p[k]})[:2000]
    return frames, native


async def compare(script, monkeypatch, settings=HboneSettings(), hooks=None) -> int:
    return (await compare_snaps(script, monkeypatch, settings, hooks))[0]


def const(*frames: bytes):
    return lambda run: list(frames)


# -- random scripts ----------------------------------------------------------
#
# Delivery: `together` puts a step's records in one read (one batch for the
# Python path, which parses the whole batch before it dispatches any event);
# otherwise every frame is in records of its own, each in its own read. The
# C relay acts frame by frame, so it equals the Python path exactly when each
# read holds one frame; with several frames in a read the two legitimately
# differ where an event changes how a later frame of the same read is taken
# (see test_batch_divergences_are_only_per_frame_ordering), so batches are
# compared exactly only for scripts without such frames.

SIDS = (1, 3, 5)


def random_frame(rnd: random.Random, hostile: bool) -> bytes:
    """One client frame: mostly DATA on the tunnels, every other kind too."""
    sid = rnd.choice(SIDS)
    r = rnd.random()
    if r < 0.58:
        n = rnd.choice((1, 2, 9, 100, 1000, 4 * KB, 16 * KB - 1, 16 * KB))
        return data(sid, n, fill=rnd.randrange(256))
    if r < 0.66:
        return data(sid, rnd.choice((5, 300)), PADDED, pad=rnd.choice((0, 1, 40)))
    if r < 0.70:
        # Empty DATA: more than H2Limits.max_consecutive_empty_frames in a
        # row is a flood (a connection error), so only hostile scripts have it.
        return data(sid, 0) if hostile else data(sid, 0, PADDED, pad=3) + data(sid, 1)
    if r < 0.76:
        return frame(PING, 0, 0, rnd.randbytes(8))
    if r < 0.80:
        return frame(SETTINGS, 0, 0, b"")
    if r < 0.84:
        return frame(WINDOW_UPDATE, 0, rnd.choice((0, sid)), struct.pack(">I", rnd.randrange(1, 5000)))
    if r < 0.88:
        return frame(PRIORITY, 0, sid, struct.pack(">IB", 0, 15))
    if r < 0.92:
        return frame(0x42, 0xFF, sid, b"x" * rnd.randrange(20))    # unknown type: ignored
    if not hostile:
        return data(sid, rnd.choice((1, 77)), fill=rnd.randrange(256))
    if r < 0.94:
        return data(sid, rnd.choice((0, 10)), END_STREAM)
    if r < 0.95:
        return frame(RST, 0, sid, struct.pack(">I", 8))
    if r < 0.96:
        return frame(GOAWAY, 0, 0, struct.pack(">II", 5, 0))
    if r < 0.97:
        return data(rnd.choice((7, 99)), rnd.choice((1, 50)))       # idle stream
    if r < 0.98:
        return frame(DATA, 0, sid, b"", length=(1 << 24) - 1)       # over max frame size
    if r < 0.99:
        return data(0, 10)                                          # DATA on stream 0
    return frame(DATA, PADDED, sid, bytes([200]) + b"x" * 10)      # pad past the frame


def random_script(seed, steps: int, hostile: bool, together=None):
    rnd = seed if isinstance(seed, random.Random) else random.Random(seed)
    script = []
    for _ in range(steps):
        frames = [random_frame(rnd, hostile) for _ in range(rnd.randrange(1, 12))]
        size = sum(map(len, frames))
        cuts = [rnd.randrange(size) for _ in range(rnd.choice((0, 1, 3, 8)))]
        script.append((const(*frames), cuts, rnd.random() < 0.5 if together is None else together))
    return script


@pytest.mark.parametrize("seed", range(4))
async def test_random_valid_frames_same_as_python(seed, monkeypatch):
    frames = await compare(random_script(seed, 25, hostile=False), monkeypatch)
    assert frames > 0


@pytest.mark.parametrize("seed", range(100, 105))
async def test_random_hostile_frames_same_as_python(seed, monkeypatch):
    await compare(random_script(seed, 25, hostile=True, together=False), monkeypatch)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False), hostile=st.booleans())
def test_frames_drawn_by_hypothesis_same_as_python(rnd, hostile):
    """The same scripts, drawn (and shrunk, on failure) by hypothesis:
    valid frames in any delivery, hostile ones a frame per read."""
    script = random_script(rnd, rnd.randrange(1, 10), hostile, together=False if hostile else None)
    loop = asyncio.new_event_loop()
    try:
        with pytest.MonkeyPatch.context() as mp:
            loop.run_until_complete(compare(script, mp))
    finally:
        loop.close()


@pytest.mark.parametrize("seed", range(200, 204))
async def test_random_hostile_batches(seed, monkeypatch):
    """Hostile frames in batches: nothing escapes, the connection ends (or
    not) with the same error, and each plain socket got what the Python
    path delivered, or more: the bytes the relay took before the frame that
    killed the connection, which the Python path's batch drops."""
    script = random_script(seed, 25, hostile=True, together=True)
    native, _ = await run_script(True, script, HboneSettings(), monkeypatch)
    python, _ = await run_script(False, script, HboneSettings(), monkeypatch)
    for n, p in zip(native, python):
        assert n["conn"] == p["conn"]
        assert n["h2_state"] == p["h2_state"]
        for got, want in zip(n["plain"], p["plain"]):
            assert got.startswith(want)
        if n["conn"][0] == "None":
            # A stream the same read closed (RST_STREAM, END_STREAM) was
            # open when the relay acknowledged its DATA, closed when the
            # Python path's batch did: only its dead window manager differs.
            for snap in (n, p):
                snap["h2_streams"] = {sid: v for sid, v in snap["h2_streams"].items()
                                      if v[0] is not StreamState.CLOSED}
            assert n == p


async def test_batch_divergences_are_only_per_frame_ordering(monkeypatch):
    """In one read, DATA for a tunnel then a connection error: the Python
    path's batch raises before any of its events reach the tunnel (the
    bytes are dropped with the connection); the relay had already delivered
    them, as the Python path does when they come in a read of their own."""
    script = [(const(data(1, 3), data(99, 1)), [], True)]
    native, _ = await run_script(True, script, HboneSettings(), monkeypatch)
    python, _ = await run_script(False, script, HboneSettings(), monkeypatch)
    split, _ = await run_script(False, [(const(data(1, 3), data(99, 1)), [], False)],
                                HboneSettings(), monkeypatch)
    assert native[0]["plain"][0] == split[0]["plain"][0] == data(1, 3)[9:]
    assert python[0]["plain"][0] == b""
    assert native[0]["conn"] == python[0]["conn"] == split[0]["conn"]


async def test_split_at_every_byte_boundary(monkeypatch):
    """The same frames, cut into two TLS records at each plaintext offset,
    delivered in one read and in two."""
    seq = [data(1, 3), frame(PING, 0, 0, b"12345678"), data(3, 20), data(1, 7, PADDED, pad=2),
           data(1, 0), data(3, 1), frame(0x42, 0, 1, b"z"), data(5, 4),
           frame(SETTINGS, 0, 0, b""), data(1, 11)]
    size = sum(map(len, seq))
    script = [(const(*seq), [k], together) for k in range(1, size) for together in (True, False)]
    frames = await compare(script, monkeypatch)
    assert frames > 0


async def test_small_windows_exhausted_and_overrun(monkeypatch):
    """The smallest windows RFC 9113 allows; the third tunnel is never read,
    so its window runs out and the peer then overruns it (FLOW_CONTROL_ERROR)."""
    settings = HboneSettings(stream_window=65_535, connection_window=4 * 65_535,
                             max_frame_size=16_384)
    script = [(const(*[data(1, 16 * KB)] * 3, data(5, 16 * KB)), [], False),
              (const(*[data(5, 16 * KB)] * 2), [7, 16 * KB + 20], False),
              (const(*[data(3, 16 * KB)] * 4, data(1, 100)), [], False),
              (const(data(5, 16 * KB - 1)), [], False),          # 65535 exactly: window 0
              (const(data(1, 10), data(5, 1)), [], False)]       # one byte over
    await compare(script, monkeypatch, settings)


# -- the sink's transport misbehaving inside write ---------------------------

def _hooked(action):
    """Hooks that wrap the first piped TcpEnd's transport: `action(run)`
    runs inside its third write."""
    def install(run):
        end = run.ends[0]
        count = [0]

        def on_write():
            count[0] += 1
            if count[0] == 3:
                action(run)
        end.transport = Hook(end.transport, on_write)
    return install


def _close_plain(run):
    run.ends[0].transport._real.close()


def _abort_connection(run):
    run.conn.transport.abort()


def _close_connection(run):
    run.conn.close()


def _reset_tunnel(run):
    run.streams[0].abort()


def _drop_sink(run):
    run.streams[0].set_sink(None)


def _pause(run):
    run.ends[0].pause_writing()


@pytest.mark.parametrize("action", [_close_plain, _abort_connection, _close_connection,
                                    _reset_tunnel, _drop_sink, _pause])
async def test_sink_write_tears_things_down(action, monkeypatch):
    burst = [f for i in range(8) for f in (data(1, 100 + i), data(3, 50))]
    script = [(const(*burst), [], False), (const(*burst), [333], False)]
    await compare(script, monkeypatch, hooks=_hooked(action))


async def test_sink_write_raising_fails_the_read_in_both_paths(monkeypatch):
    """A transport.write that raises: the exception leaves data_received on
    both paths (the event loop then closes the TCP connection), nothing is
    swallowed, and what happened before it is counted the same."""
    def boom(run):
        raise RuntimeError("write failed")
    results = []
    for relay in (True, False):
        run = Run(relay, HboneSettings())
        await run.start(monkeypatch)
        try:
            _hooked(boom)(run)
            run.write([data(1, 10)] * 5, [])
            with pytest.raises(RuntimeError, match="write failed"):
                run.deliver(True)
            await asyncio.sleep(0)
            results.append((run.snapshot()["plain"], run.ends[0].bytes_written))
        finally:
            run.close()
    payload = data(1, 10)[9:]
    assert results[0] == results[1] == ([payload * 3, b""], 20)


# -- plain sockets that die during relay writes ------------------------------

async def test_plain_peer_reset_during_a_batch(monkeypatch):
    """The plain side's peer is gone (RST) before a batch arrives: the first
    write fails inside the relay, the transport closes, the rest of the batch
    queues for read() exactly as on the Python path; the other tunnel on the
    connection goes on undisturbed."""
    def kill(run):
        s = run.socks[0]
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        run.socks[0] = socket.socket()      # snapshot reads nothing from it
        run.socks[0].setblocking(False)
    burst = [f for i in range(20) for f in (data(1, 4 * KB, fill=i), data(3, KB, fill=i))]
    script = [(const(data(1, 10), data(3, 10)), [], True),
              (lambda run: (kill(run), burst)[1], [], True),
              (const(*burst), [5000], False)]
    frames = await compare(script, monkeypatch)
    assert frames >= 2


# -- references ---------------------------------------------------------------

async def test_relay_leaks_no_references_or_memory(monkeypatch):
    """Thousands of frames through TlsPump and Relay.feed: the objects they touch keep
    their reference counts and no memory stays allocated."""
    run = Run(True, HboneSettings())
    await run.start(monkeypatch)
    try:
        objs = run.relay_objects()

        def batch():
            run.write([data(1, 64, fill=i) for i in range(200)], [])
            run.deliver(True)
            run.frames_sent()
            assert run.socks[0].recv(1 << 20) == b"".join(data(1, 64, fill=i)[9:]
                                                         for i in range(200))
        leaked, grown, taken = leaks(objs, batch, lambda: run.server._relay.frames)
        assert taken == 2000
        assert leaked == []
        assert grown < 64 * KB, f"{grown} bytes still allocated after 2000 frames"
    finally:
        run.close()


# -- errors raised by the objects the relay asks ------------------------------

class Bad:
    """A value whose truth or equality raises (a broken transport or state)."""

    def __bool__(self):
        raise ValueError("no truth")

    def __eq__(self, other):
        raise ValueError("no equality")

    __hash__ = object.__hash__


def _bad_is_closing(run):
    hook = run.ends[0].transport = Hook(run.ends[0].transport, lambda: None)
    hook.is_closing = lambda: Bad()


def _bad_state(run):
    run.conn.core._streams[1].state = Bad()


def _bad_buffer_size(run):
    run.s_tcp.get_write_buffer_size = lambda: Bad()
    # C asks for the buffer size only when output_drained would reset a count
    # (a control frame not yet written): the Python path asks every time.
    run.conn.core._h2.guard.outbound_control = 1


@pytest.mark.parametrize("breaks", [_bad_is_closing, _bad_state, _bad_buffer_size])
async def test_errors_of_python_objects_propagate_as_on_the_python_path(breaks, monkeypatch):
    """The relay reads truth values and compares states of Python objects;
    when that raises, the exception leaves Relay.feed as it leaves the
    Python path (never a result returned with an exception still set, which
    CPython turns into SystemError)."""
    for relay in (True, False):
        run = Run(relay, HboneSettings())
        await run.start(monkeypatch)
        try:
            breaks(run)
            run.write([data(1, 10)], [])
            with pytest.raises(ValueError, match="no truth|no equality"):
                run.deliver(True)
        finally:
            run.close()


# -- the send half (core/hbone/native/send.c) ---------------------------------
#
# The client's third tunnel fed by core.pipe's push (a TcpEnd's sink): the
# C Sender on one run, the Python push on the other; the server's stream has
# no sink, so what arrives queues for read(). Ops from both ends, seeded.

def send_op(rnd: random.Random):
    r = rnd.random()
    if r < 0.55:
        return ("push", rnd.choice((1, 100, 16 * KB - 9, 16 * KB, 40 * KB, 256 * KB, 256 * KB + 1)))
    return rnd.choice([("view", 1000), ("pause",), ("resume",), ("read",), ("read",),
                       ("writing", True), ("writing", False), ("window", 70_000),
                       ("window", 2 * 1024 * 1024), ("max_frame", 16_384), ("drain",),
                       ("reset",), ("eof",)])


class SendRun(Run):
    @property
    def client_native(self) -> bool:
        return self.relay

    async def setup_push(self) -> None:
        self.c, self.s = self.client_streams[2], self.streams[2]
        self.push_pushed = [0, 0]
        # The pushing TcpEnd, on a real socket: write_held holds it (its
        # transport stops reading) under backpressure.
        self.src_sock, theirs = socket.socketpair()
        _, self.src = await asyncio.get_running_loop().create_connection(TcpEnd, sock=theirs)
        self.push = _counted(self.c, self.push_pushed, 1, self.src)
        assert (type(self.push).__name__ == "Sender") == self.relay
        # A TcpPump with the Sender as its sink (not the src's protocol: its
        # reads are this test's, pump_read), as uvloop reads a piped TcpEnd.
        self.tcp_pump = (fastpath.native.TcpPump(self.src, self.push, self.src._chunks, None,
                                                 None) if self.relay else None)

    def read_size(self) -> int:
        """What the next read of the pushing TcpEnd may be: a TcpPump's
        get_buffer on the C path; on the Python one, core.pipe.SizedReads'
        by HboneStream.send_room, sender_window's twin (the send window, if
        any is left, up to one frame; else a whole read)."""
        if self.tcp_pump is not None:
            return len(self.tcp_pump.get_buffer(-1))
        return len(SizedReads(self.src, self.c.send_room).get_buffer(-1))

    def reader(self):
        """The protocol pump_read reads through: the TcpPump (the C path only)."""
        return self.tcp_pump

    def sent_count(self) -> int:
        """What pump_read counts as sent: the Sender's frames sent in place."""
        return self.push.in_place

    def pump_read(self, n: int) -> tuple[int, int]:
        """One read of n bytes into the reader's buffer, as a loop that lends
        buffers reads: (the size get_buffer lent, what was sent from it)."""
        reader = self.reader()
        view = reader.get_buffer(-1)
        size = len(view)
        view[:n] = bytes([n % 251]) * n
        view.release()
        before = self.sent_count()
        reader.buffer_updated(n)
        return size, self.sent_count() - before

    def close(self) -> None:
        super().close()
        self.src.transport.close()
        self.src_sock.close()

    def do(self, op):
        kind, arg = op[0], op[1:]
        client, server = self.client_conn, self.conn
        result = None
        if kind == "push":
            result = self.push(bytes([arg[0] % 251]) * arg[0])
        elif kind == "view":
            result = self.push(memoryview(b"v" * arg[0]))
        elif kind == "pause":
            client.pause_writing()
        elif kind == "resume":
            client.resume_writing()
        elif kind == "writing":
            self.c._writing = arg[0]
        elif kind == "eof":
            self.c.write_eof()
        elif kind == "read":
            while self.s._chunks:
                _, fcl = self.s._chunks.popleft()
                self.s._core.acknowledge(self.s.stream_id, fcl)
            server.flush()
        elif kind == "window":
            server.core._h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: arg[0]})
            server.flush()
        elif kind == "max_frame":
            server.core._h2.update_settings({SettingCodes.MAX_FRAME_SIZE: arg[0]})
            server.flush()
        elif kind == "drain":
            server.start_drain()
        elif kind == "reset":
            self.s.abort()
        # (TLS record sizes are not compared: SHOAL_NATIVE=0's TLS writer
        # seals a lone 9-byte frame header before a large payload.)
        self.pump()
        h2 = client.core._h2
        st = h2.streams.get(self.c.stream_id)
        g = h2.guard
        return {
            "result": result,
            "server_got": b"".join(bytes(d) for d, _ in self.s._chunks),
            "server": (self.s._eof, str(self.s._error), str(server.error)),
            "client": (str(self.c._error), str(client.error), client.can_write.is_set()),
            "windows": (h2.outbound_flow_control_window,
                        st.outbound_flow_control_window if st else None,
                        st.state_machine.state if st else None),
            "guard": (g.data_frames_sent, g.outbound_control, g.window_updates),
            "counts": (self.c.bytes_sent, tuple(self.push_pushed)),
            "held": (self.c._held is self.src, self.src._held, self.src.transport.is_reading()),
            "read_size": self.read_size(),
        }


async def send_script(relay: bool, ops, monkeypatch):
    run = SendRun(relay, HboneSettings())
    await run.start(monkeypatch)
    try:
        await run.setup_push()
        return [run.do(op) for op in ops], (run.push.frames if relay else 0)
    finally:
        run.close()


@pytest.mark.parametrize("seed", range(300, 306))
async def test_send_half_random_ops_same_as_python(seed, monkeypatch):
    rnd = random.Random(seed)
    ops = [("push", 100)] + [send_op(rnd) for _ in range(40)]
    native, frames = await send_script(True, ops, monkeypatch)
    python, _ = await send_script(False, ops, monkeypatch)
    assert frames > 0
    for i, (n, p) in enumerate(zip(native, python)):
        assert n == p, f"step {i} {ops[i]}: " + str({k: (n[k], p[k]) for k in n if n[k] != p[k]})[:1500]


async def compare_send(ops, monkeypatch) -> tuple[list, int]:
    native, frames = await send_script(True, ops, monkeypatch)
    python, _ = await send_script(False, ops, monkeypatch)
    for i, (n, p) in enumerate(zip(native, python)):
        assert n == p, f"step {i} {ops[i]}: " + str({k: (n[k], p[k]) for k in n if n[k] != p[k]})[:1500]
    return native, frames


FREE, HELD = (False, False, True), (True, True, False)      # (stream holds it, end held, reading)


async def test_send_half_sends_over_the_mark_and_holds_the_source_until_it_drains(monkeypatch):
    """The transport over its high-water mark (pause_writing): C still
    frames and seals (no Python copy task takes over) and the pushing
    TcpEnd's transport stops reading; resume_writing releases it."""
    ops = [("push", 100), ("pause",), ("push", 1000), ("push", 16 * KB), ("resume",),
           ("push", 100)]
    snaps, frames = await compare_send(ops, monkeypatch)
    assert frames == 4
    assert [s["held"] for s in snaps] == [FREE, FREE, HELD, HELD, FREE, FREE]
    assert [s["result"] for s in snaps] == [True, None, True, True, None, True]


async def test_send_half_holds_the_source_while_the_window_is_short(monkeypatch):
    """Less than HOLD_SEND_WINDOW of send window left after a push: the
    source is held (its next read would not fit); a transport drain does
    not release it, the WINDOW_UPDATE the server's read sends does."""
    ops = [("push", 256 * KB)] * 16 + [("push", 1), ("pause",), ("resume",), ("read",),
                                       ("push", 256 * KB)]
    snaps, frames = await compare_send(ops, monkeypatch)
    assert HOLD_SEND_WINDOW == 256 * KB       # 4 MiB stream window: 15 pushes leave exactly that
    assert [s["held"] for s in snaps] == [FREE] * 15 + [HELD] * 4 + [FREE, FREE]
    assert snaps[16]["result"] is False        # no window: refused, still held
    assert frames == 17


async def test_send_half_holds_for_a_small_window_only_once_an_update_is_owed(monkeypatch):
    """A peer with a 64 KiB stream window (nghttpx's backend default) sends
    WINDOW_UPDATE only once half of it is consumed. A small push leaves more
    than half: the source is not held (held, it waited for an update the
    peer, having read everything, never sent: test_interop's nghttpx echo
    stalled). A push that leaves half or less holds it until the update."""
    ops = [("window", 65_535), ("push", 1000), ("read",), ("push", 32 * KB), ("read",),
           ("push", 100)]
    snaps, frames = await compare_send(ops, monkeypatch)
    assert [s["held"] for s in snaps] == [FREE, FREE, FREE, HELD, FREE, FREE]
    assert [s["result"] for s in snaps] == [None, True, None, True, None, True]
    assert frames == 3


async def _sized_run(monkeypatch, window: int, run: SendRun | None = None) -> SendRun:
    """`run` (the C path's SendRun if None) started, its push set up, the
    server's stream window `window`."""
    run = run or SendRun(True, HboneSettings())
    await run.start(monkeypatch)
    await run.setup_push()
    run.do(("window", window))
    return run


def read_to_zero(run: SendRun, sent) -> dict:
    """Reads of 30,000, 30,000 and 40,000 bytes into a 100,000 window: each
    lent what is left and sent whole (`sent(n)`: what pump_read counts for
    a read of n), nothing queued, the source held only after the last (none
    left; the old rule held it after the second). The snapshot then."""
    assert run.pump_read(30_000) == (100_000, sent(30_000))
    assert run.pump_read(30_000) == (70_000, sent(30_000))
    snap = run.do(("look",))
    assert snap["held"] == FREE and snap["read_size"] == 40_000
    assert run.c._core.window_update_owed(run.c.stream_id)     # the old rule held here
    assert run.pump_read(40_000) == (40_000, sent(40_000))
    snap = run.do(("look",))
    assert snap["held"] == HELD and snap["windows"][1] == 0
    assert not run.src._chunks and run.src._queued == 0 and not run.c._writing
    return snap


async def test_a_pumped_read_is_sized_to_the_window_sent_whole_and_held_only_at_zero(monkeypatch):
    """On uvloop a piped TcpEnd reads into the TcpPump's buffer: get_buffer
    lends no more than the send window left, so a read sized to it is sent
    whole (framed in place, nothing queued for the pipe's copy task), and
    the TcpEnd is held for the window only once none is left. Held with
    window left (40,000 of 100,000: under HOLD_SEND_WINDOW and an update owed
    by the half rule), a peer that updates later than half (Netty's 0.75, or
    when exhausted) waited for data the held tunnel never sent."""
    run = await _sized_run(monkeypatch, 100_000)
    try:
        assert run.read_size() == 100_000 == run.c._core.send_window(run.c.stream_id)
        snap = read_to_zero(run, lambda n: 1)                         # one frame each
        assert snap["read_size"] == fastpath.native.PUMP_READ         # none left: not sized
        assert run.push.frames == run.push.in_place == 3
        snap = run.do(("read",))                                      # the WINDOW_UPDATE
        assert snap["held"] == FREE and 0 < snap["read_size"] <= 100_000
        assert snap["read_size"] == snap["windows"][1]
        # The Python path's SizedReads holds at the same window (test_sized_reads).
        assert fastpath.native.SIZED_HOLD_WINDOW == SIZED_HOLD_WINDOW
    finally:
        run.close()


async def test_a_pumped_read_is_at_most_one_frame_of_a_small_framed_peer(monkeypatch):
    """The peer's SETTINGS_MAX_FRAME_SIZE bounds a read too (nghttp2's and
    Netty's default, 16 KiB): bigger, the read went the bytes way, whose
    hold rule is the half rule's."""
    run = await _sized_run(monkeypatch, 100_000)
    try:
        assert run.do(("max_frame", 16_384))["read_size"] == 16_384
        assert run.pump_read(16_384) == (16_384, 1)
        assert run.push.frames == run.push.in_place == 1 and not run.src._chunks
    finally:
        run.close()


async def test_a_sized_read_over_the_mark_is_held_for_the_mark_only(monkeypatch):
    """Over the transport's mark a sized read still goes out and the
    TcpEnd is held; the drain releases it though the window is short by the
    half rule: the next read is sized to it, so no update need come first."""
    run = await _sized_run(monkeypatch, 100_000)
    try:
        run.do(("pause",))
        assert run.pump_read(60_000) == (100_000, 1)
        assert run.do(("look",))["held"] == HELD
        assert run.c._core.window_update_owed(run.c.stream_id)
        snap = run.do(("resume",))
        assert snap["held"] == FREE and snap["read_size"] == 40_000
    finally:
        run.close()


@pytest.mark.parametrize("end", [("reset",), ("eof",), ("writing", True), ("drain",),
                                 ("window", 70_000), ("max_frame", 16_384)])
async def test_send_half_held_then_stream_changes(end, monkeypatch):
    """Held over the mark, then the stream is reset (released: the pipe
    sees the error), ended, written by a write() in progress, the
    connection drained or the peer's settings changed; then the drain."""
    ops = [("pause",), ("push", 1000), end, ("push", 100), ("resume",), ("push", 100)]
    snaps, _ = await compare_send(ops, monkeypatch)
    assert snaps[1]["held"] == HELD
    if end == ("reset",):
        assert snaps[2]["held"] == FREE and snaps[3]["result"] is False
    assert snaps[4]["held"] == FREE


async def test_send_half_errors_propagate_as_on_the_python_path(monkeypatch):
    """The TCP transport's buffer size whose truth raises: the push raises
    it on both paths (the C Sender returned True with the error still set)."""
    for relay in (True, False):
        run = SendRun(relay, HboneSettings())
        await run.start(monkeypatch)
        try:
            await run.setup_push()
            run.c_tcp.get_write_buffer_size = lambda: Bad()
            run.client_conn.core._h2.guard.outbound_control = 1      # see _bad_buffer_size
            with pytest.raises(ValueError, match="no truth"):
                run.push(b"x" * 100)
        finally:
            run.close()


async def test_sender_checks_its_list_index_on_every_push(monkeypatch):
    """core.pipe's count list is the Sender's only by convention: a shorter
    list is an IndexError before anything is sent, not a read past its end."""
    run = SendRun(True, HboneSettings())
    await run.start(monkeypatch)
    try:
        await run.setup_push()
        run.push_pushed.clear()
        with pytest.raises(IndexError):
            run.push(b"x" * 100)
        assert run.c.bytes_sent == 0 and not run.c_tcp.out
    finally:
        run.close()


async def test_sender_rechecks_its_list_index_after_python_ran(monkeypatch):
    """The count list shrunk by Python that the push itself runs (here the
    TCP transport's write, after the frame went out): IndexError on both
    paths (the Python push's `pushed[i] += n`), not a read of the emptied
    list's missing items (a segfault)."""
    for relay in (True, False):
        run = SendRun(relay, HboneSettings())
        await run.start(monkeypatch)
        try:
            await run.setup_push()
            write = run.c_tcp.write

            def shrinking(records):
                run.push_pushed.clear()
                write(records)
            run.c_tcp.write = shrinking
            with pytest.raises(IndexError):
                run.push(b"x" * 100)
            assert run.c.bytes_sent == 100 and run.push_pushed == []
        finally:
            run.close()


# A Relay and a Sender whose __init__ failed (on objects whose fields are not
# C's: the first checks pass, the field pointers are then missing) and that
# are used after it: each must raise, not follow those pointers. The Relay
# made that way; each of them made right first, then made wrong.
HALF_MADE = """
import asyncio
from types import SimpleNamespace as NS
from shoal.benchmarks.load.bench_hbone_tls import Link
from shoal.core.hbone import fastpath, protocol
from tests.helpers.pki import TestPKI

native = fastpath.native


async def main():
    link = Link(TestPKI())
    c, _ = await link.open()
    proto, sslsock, raw = link.client_conn.transport.native_tls()
    record = protocol._Stream()
    record.state = "OPEN"
    h2 = NS(streams={}, incoming_buffer=NS(), guard=NS(), state_machine=NS(state=1))
    conn = NS(core=NS(_streams={1: record}, _h2=h2), streams={}, can_write=NS(_value=True))
    relay_args = (sslsock, conn, raw, (1,), (), "CLOSED", 1)
    sender_args = (NS(stream_id=1), print, [0], 0, conn, proto, sslsock, raw, (1,), (), "OPEN", 1)
    fresh = native.Relay.__new__(native.Relay)
    made = [(fresh, relay_args, fresh.feed),
            (link.client._relay, relay_args, link.client._relay.feed)]
    sender = link.client_conn.native_sender(c, print, [0], 0)
    made.append((sender, sender_args, lambda: sender(b"x")))
    for obj, args, use in made:
        try:
            obj.__init__(*args)
        except TypeError as e:
            print(type(obj).__name__, "init:", e)
        try:
            use()
        except ValueError as e:
            print(e)

asyncio.run(main())
"""


def test_a_failed_init_leaves_relay_and_sender_unusable():
    # In a child: the failure this guards against is a segfault.
    r = subprocess.run([sys.executable, "-c", HALF_MADE], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    relay = "Relay init: Relay needs h2fast's connection and the HBONE core (their fields in C)"
    sender = "Sender init: Sender needs h2fast's connection, the HBONE core and stream in C fields"
    assert r.stdout.splitlines() == [relay, "Relay not initialised", relay,
                                     "Relay not initialised", sender, "Sender not initialised"]


async def test_sender_leaks_no_references_or_memory(monkeypatch):
    """Thousands of pushes through the C Sender (the server reads them out
    between batches): the objects it touches keep their reference counts and
    no memory stays allocated."""
    run = SendRun(True, HboneSettings())
    await run.start(monkeypatch)
    try:
        await run.setup_push()
        client = run.client_conn
        h2 = client.core._h2
        objs = [run.c, client, client.core, h2, h2.guard, h2.streams[5], client.core._streams[5],
                client.can_write, run.push_pushed, run.client._ssl, run.c_tcp, run.push,
                ConnectionState.CLIENT_OPEN, StreamState.OPEN]
        payload = b"p" * 100

        def batch():
            for _ in range(200):
                assert run.push(payload) is True
            run.do(("read",))
        leaked, grown, taken = leaks(objs, batch, lambda: run.push.frames)
        assert taken == 2000
        assert leaked == []
        assert grown < 64 * KB, f"{grown} bytes still allocated after 2000 pushes"
    finally:
        run.close()


# -- flow control at its edges (the windows are C fields: core/hbone/native/flow.c)

def _frames(sid: int, total: int, fill: int = 0x61) -> list[bytes]:
    """`total` bytes of DATA on `sid` in frames of at most 16 KiB."""
    out = []
    while total > 0:
        n = min(total, 16 * KB)
        out.append(data(sid, n, fill=fill))
        total -= n
    return out


# h2's WindowManager sends a WINDOW_UPDATE when the bytes processed reach half
# the window, or when the window is empty and more than min(1024, window / 4)
# were processed. With a 65,535-byte stream window the first is at 32,767
# bytes; with a 100,000-byte connection window of which the unread tunnel
# (stream 5) holds 65,535, the second is at the last 34,465 bytes.
SMALL = HboneSettings(stream_window=65_535, connection_window=100_000, max_frame_size=16_384)


def _updates(snap, sid: int) -> int:
    """WINDOW_UPDATE frames for `sid` the server sent in that step."""
    return sum(1 for f in snap["sent"] if f[3] == WINDOW_UPDATE
               and int.from_bytes(f[5:9], "big") == sid)


@pytest.mark.parametrize("offset", [-2, -1, 0, 1])
async def test_stream_window_update_at_its_threshold(offset, monkeypatch):
    half = 65_535 // 2
    script = [(const(*_frames(1, half + offset)), [], False),
              (const(data(1, 1)), [], False),
              (const(data(1, 1), data(3, 1)), [], False)]
    frames, snaps = await compare_snaps(script, monkeypatch, SMALL)
    assert frames > 0
    step = max(0, -offset)                  # where the total reaches half the window
    assert [_updates(s, 1) for s in snaps] == [int(i == step) for i in range(3)]


@pytest.mark.parametrize("last", [1, 2, 1024, 1025])
async def test_connection_window_update_when_empty(last, monkeypatch):
    """The unread tunnel holds most of the connection window; the piped ones
    empty it, the last frame exactly: WINDOW_UPDATE (connection) at zero."""
    rest = 100_000 - 65_535 - 30_000
    script = [(const(*_frames(5, 65_535)), [], False),
              (const(*_frames(1, 30_000)), [], False),
              (const(*_frames(3, rest - last)), [], False),
              (const(data(3, last)), [], False),
              (const(data(1, 10)), [], False)]
    frames, snaps = await compare_snaps(script, monkeypatch, SMALL)
    assert frames > 0
    assert [_updates(s, 0) for s in snaps] == [0, 0, 0, 1, 0]
    assert snaps[3]["conn_window"][0] > 0


def _reset_by_server(run):
    run.streams[0].abort()
    run.conn.flush()
    return []


async def test_stream_reset_mid_window(monkeypatch):
    """A tunnel reset by the peer and one reset by the server, each with half
    its window consumed; DATA for them after the reset, the other tunnel on."""
    script = [(const(*_frames(1, 30_000), *_frames(3, 30_000)), [], False),
              (const(frame(RST, 0, 3, struct.pack(">I", 8))), [], False),
              (_reset_by_server, [], False),
              (const(data(3, 5000), data(1, 5000), data(1, 100)), [], False),
              (const(*_frames(3, 10)), [], False)]
    await compare(script, monkeypatch, SMALL)


def _initial_window(size: int):
    """The server changes SETTINGS_INITIAL_WINDOW_SIZE; the client's ACK
    makes h2 move every stream's inbound window by the difference."""
    def build(run):
        from h2.settings import SettingCodes as codes
        run.conn.core._h2.update_settings({codes.INITIAL_WINDOW_SIZE: size})
        run.conn.flush()
        return [frame(SETTINGS, 0x1, 0)]
    return build


@pytest.mark.parametrize("size", [65_535, 1024 * 1024])
async def test_initial_window_changed_mid_transfer(size, monkeypatch):
    settings = HboneSettings(stream_window=200_000, connection_window=2_000_000)
    script = [(const(*_frames(1, 90_000), *_frames(3, 40_000), *_frames(5, 20_000)), [], False),
              (_initial_window(size), [], False),
              (const(*_frames(1, 60_000), *_frames(3, 60_000)), [], False),
              (const(*_frames(1, 40_000)), [], False)]
    frames, snaps = await compare_snaps(script, monkeypatch, settings)
    assert frames > 0
    assert snaps[0]["h2_streams"][5][1][1] == 200_000        # (state, (current, max, processed))
    assert snaps[1]["h2_streams"][5][1][1] == size


def _unpipe(run):
    run.streams[0].set_sink(None)
    return [data(1, 300), data(1, 5000)]


def _python_reads(run):
    """What HboneStream.read's caller does: take the queued chunks, their
    bytes acknowledged (WINDOW_UPDATEs when due)."""
    s = run.streams[0]
    while s._chunks:
        _, fcl = s._chunks.popleft()
        s._core.acknowledge(s.stream_id, fcl)
    run.conn.flush()
    return [data(1, 7)]


async def test_unpipe_then_python_reads(monkeypatch):
    script = [(const(*_frames(1, 20_000)), [], False),
              (_unpipe, [], False),
              (const(*_frames(1, 30_000)), [], False),
              (_python_reads, [], False),
              (_python_reads, [], False)]
    frames, snaps = await compare_snaps(script, monkeypatch, SMALL)
    assert frames > 0
    assert len(snaps[2]["queued"][1][0]) > 0                 # unpiped: queued for read()
    assert _updates(snaps[3], 1) == 1                        # read: its window reopened
    assert snaps[4]["queued"][1][0] == [data(1, 7)[9:]]     # only what came after the read
