"""The C receive path of an HBONE-to-TCP relay (core/hbone/native/relay.c)
against the Python path it replaces, byte by byte.

Two real HboneConnections on real TLS 1.3 (joined in memory, as in
benchmarks/load/bench_hbone_tls.py); the server's tunnel is piped (core.pipe's
sink) to a TcpEnd on a real socket pair. Each script of client frames runs
twice, once with the C relay and once without it, with the ciphertext cut the
same way; after every step both runs must agree on everything the relay
touches: the bytes on the plain socket and those left for read(), both h2
inbound window managers, the flood guard's counters, the stream's, the
endpoint's and the pipe's byte counts, and what the client saw of the
WINDOW_UPDATEs (its send windows).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque

import pytest
import uvloop

from shoal.benchmarks.load.bench_hbone_tls import Link
from shoal.core.hbone import fastpath
from shoal.core.pipe import TcpEnd, _counted
from tests.helpers.pki import TestPKI
from tests.helpers.wait import until

KB = 1024
PKI = TestPKI()

pytestmark = pytest.mark.skipif(fastpath.native is None, reason="native path off (SHOAL_NATIVE=0)")


class Run:
    """One Link with an open tunnel whose server side is piped to a TcpEnd."""

    def __init__(self, relay: bool) -> None:
        self.relay = relay

    async def start(self) -> None:
        self.link = Link(PKI)
        self.c, self.s = await self.link.open()
        if not self.relay:
            self.link.server._relay = self.link.client._relay = None
        assert (self.link.server._relay is not None) == self.relay
        self.sock, theirs = socket.socketpair()
        self.sock.setblocking(False)
        _, self.end = await asyncio.get_running_loop().create_connection(TcpEnd, sock=theirs)
        self.pushed = [0, 0]
        self.s.set_sink(_counted(self.end, self.pushed, 0))
        self.received = bytearray()

    def close(self) -> None:
        self.end.transport.close()
        self.sock.close()

    @property
    def frames(self) -> int:
        r = self.link.server._relay
        return r.frames if r is not None else 0

    def send(self, op) -> None:
        """Queue one client frame (not yet delivered to the server)."""
        conn, sid = self.link.client_conn, self.c.stream_id
        h2 = conn.core._h2
        kind, arg = op
        if kind == "data":
            assert conn.core.send_data(sid, bytes([len(self.received) % 251]) * arg) == arg
        elif kind == "padded":
            h2.send_data(sid, b"p" * arg, pad_length=7)
        elif kind == "ping":
            conn.core.ping()
        elif kind == "end":
            conn.core.end_stream(sid)
        elif kind == "pause":
            self.end.pause_writing()
        elif kind == "resume":
            self.end.resume_writing()
        conn.flush()

    def deliver(self, cut: int) -> None:
        """The client's ciphertext to the server in pieces of `cut` bytes
        (0: all at once), then the server's answer back."""
        data = b"".join(self.link.c_tcp.out)
        self.link.c_tcp.out.clear()
        step = cut or max(len(data), 1)
        for i in range(0, len(data), step):
            self.link.server.data_received(data[i:i + step])
        self.link.pump()

    def snapshot(self) -> dict:
        while True:
            try:
                got = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not got:
                break
            self.received += got
        server = self.link.server.app
        h2 = server.core._h2
        stream = h2.streams.get(self.s.stream_id)
        conn_wm = h2._inbound_flow_control_window_manager
        guard = h2.guard
        client = self.link.client_conn.core

        def wm(m):
            return (m.current_window_size, m.max_window_size, m._bytes_processed)
        return {
            "socket": bytes(self.received),
            "queued": [bytes(d) for d, _ in self.s._chunks],
            "queued_fcl": [f for _, f in self.s._chunks],
            "conn_window": wm(conn_wm),
            "stream_window": wm(stream._inbound_window_manager) if stream else None,
            "guard": (guard.empty_in_a_row, guard.outbound_control, guard.data_frames_sent,
                      guard.window_updates),
            "counts": (self.s.bytes_received, self.end.bytes_written, tuple(self.pushed)),
            "eof": self.s._eof,
            "client_window": (client.send_window(self.c.stream_id),
                              client._h2.outbound_flow_control_window),
            "h2_buffer": bytes(h2.incoming_buffer._data),
        }


async def run_script(relay: bool, steps, cut: int):
    run = Run(relay)
    await run.start()
    try:
        snaps = []
        for ops in steps:
            for op in ops:
                run.send(op)
            run.deliver(cut)
            await asyncio.sleep(0)        # let the selector transport flush
            snaps.append(run.snapshot())
        return snaps, run.frames
    finally:
        run.close()


async def compare(steps, cut: int = 0) -> int:
    native, frames = await run_script(True, steps, cut)
    python, none = await run_script(False, steps, cut)
    assert none == 0
    for i, (n, p) in enumerate(zip(native, python)):
        assert n == p, f"step {i}: {sorted(k for k in n if n[k] != p[k])} differ"
    return frames


@pytest.mark.parametrize("cut", [0, 1, 7, 1000])
async def test_small_frames_go_to_the_socket_in_c(cut):
    frames = await compare([[("data", KB)], [("data", KB), ("data", 10)], [("data", 1)]], cut)
    assert frames == 4


async def test_window_update_thresholds_as_h2():
    """Over half the 4 MiB stream window (h2 sends WINDOW_UPDATE there), in
    16 KiB frames delivered in batches of eight."""
    frames = await compare([[("data", 16 * KB)] * 8 for _ in range(40)])
    assert frames == 320


async def test_control_frames_and_end_stream_take_the_python_path_in_order():
    steps = [[("data", KB), ("ping", None), ("data", 2 * KB)],
             [("padded", 100), ("data", 3)],
             [("data", 5), ("end", None)]]
    frames = await compare(steps)
    # every flagless DATA frame: the relay goes on after each frame the
    # Python path took (the PING, the padded frame), in the same read
    assert frames == 4


@pytest.mark.parametrize("cut", [0, 4096])
async def test_large_frame_goes_to_h2s_body_buffer(cut):
    steps = [[("data", 100 * KB)], [("data", KB)], [("data", 40 * KB), ("data", KB)]]
    frames = await compare(steps, cut)
    assert frames >= 1


async def test_nothing_overtakes_data_queued_for_read():
    """A paused socket queues DATA in the stream; later frames queue behind
    it (C and Python alike) until read() drains the queue."""
    steps = [[("pause", None), ("data", KB), ("data", 2 * KB)],
             [("resume", None), ("data", 3 * KB)]]
    frames = await compare(steps)
    assert frames == 0


@pytest.mark.parametrize("field", ["drain_waiter", "no_transport"])
async def test_relay_reads_the_ends_write_conditions_as_python_sets_them(field):
    """TcpEnd's transport and _drain_waiter are C fields the relay reads by
    pointer (flow.c): what Python sets there stops the C path as it stops
    write_nowait, and the frame queues for read() with its count unchanged."""
    run = Run(True)
    await run.start()
    transport = run.end.transport
    try:
        if field == "drain_waiter":
            run.end._drain_waiter = asyncio.get_running_loop().create_future()
        else:
            run.end.transport = None
        run.send(("data", KB))
        run.deliver(0)
        assert run.frames == 0 and run.end.bytes_written == 0 and run.pushed == [0, 0]
        assert [len(d) for d, _ in run.s._chunks] == [KB]
        run.end._drain_waiter, run.end.transport = None, transport
        await run.s.read()                  # the queue empties: C may take the next frame
        run.send(("data", KB))
        run.deliver(0)
        assert run.frames == 1 and run.end.bytes_written == KB and run.pushed == [KB, 0]
    finally:
        run.end.transport = transport
        run.close()


async def test_relay_stops_when_the_sink_is_removed():
    run = Run(True)
    await run.start()
    try:
        run.send(("data", KB))
        run.deliver(0)
        assert run.frames == 1
        run.s.set_sink(None)
        run.send(("data", KB))
        run.deliver(0)
        assert run.frames == 1
        assert [len(d) for d, _ in run.s._chunks] == [KB]
    finally:
        run.close()


# -- the send half (core/hbone/native/send.c) ---------------------------------


class QueueEnd:
    """What a TcpPump needs of its TcpEnd when the sink refuses: _queue."""

    def __init__(self) -> None:
        self.queued: list[bytes] = []

    def _queue(self, data: bytes) -> None:
        self.queued.append(data)


class SendRun:
    """The client's tunnel fed by core.pipe's push, as a TcpEnd would; the
    server's stream has no sink, so what arrives queues for read().

    `room`: each push is a read into a TcpPump's buffer with the Sender as its
    sink (uvloop's get_buffer / buffer_updated), so the C path frames and
    seals it in that buffer; its result is whether the pump did not queue it
    (what push() returned on the other runs)."""

    def __init__(self, native: bool, room: bool = False) -> None:
        self.native, self.room = native, room

    async def start(self) -> None:
        self.link = Link(PKI)
        self.c, self.s = await self.link.open()
        self.link.server._relay = None
        self.pushed = [0, 0]
        saved = fastpath.native
        if not self.native:
            fastpath.native = None        # _counted then gives the Python push
        try:
            self.push = _counted(self.c, self.pushed, 1)
        finally:
            fastpath.native = saved
        assert (type(self.push).__name__ == "Sender") == self.native
        if self.room:
            self.queue_end = QueueEnd()
            self.pump = fastpath.native.TcpPump(self.queue_end, self.push, deque(), None, None)

    def pump_read(self, data: bytes) -> bool:
        """One read of `data` into the pump's buffer, as uvloop reads."""
        view = self.pump.get_buffer(-1)
        view[:len(data)] = data
        before = len(self.queue_end.queued)
        self.pump.buffer_updated(len(data))
        return len(self.queue_end.queued) == before

    def do(self, op) -> bool | None:
        kind, arg = op
        conn = self.link.client_conn
        if kind == "push":
            data = bytes([arg % 251]) * arg
            return self.pump_read(data) if self.room else self.push(data)
        if kind == "pushview":
            return self.push(memoryview(b"v" * arg))
        if kind == "pause":
            conn.pause_writing()
        elif kind == "resume":
            conn.resume_writing()
        elif kind == "eof":
            self.c.write_eof()
        elif kind == "writing":
            self.c._writing = arg
        elif kind == "read":
            # The server reads everything queued: its WINDOW_UPDATEs go back.
            while self.s._chunks:
                data, fcl = self.s._chunks.popleft()
                self.s._core.acknowledge(self.s.stream_id, fcl)
            self.link.server.app.flush()
        return None

    def snapshot(self, result) -> dict:
        records = [len(r) for r in self.link.c_tcp.out]
        self.link.pump()
        h2 = self.link.client_conn.core._h2
        stream = h2.streams.get(self.c.stream_id)
        guard = h2.guard
        return {
            "result": result,
            "records": records,
            "server_got": b"".join(bytes(d) for d, _ in self.s._chunks),
            "server_eof": self.s._eof,
            "windows": (h2.outbound_flow_control_window,
                        stream.outbound_flow_control_window if stream else None),
            "guard": (guard.data_frames_sent, guard.outbound_control, guard.window_updates),
            "counts": (self.c.bytes_sent, tuple(self.pushed)),
        }


async def send_script(native: bool, ops, room: bool = False):
    run = SendRun(native, room)
    await run.start()
    snaps = [run.snapshot(run.do(op)) for op in ops]
    if room:
        assert run.push.in_place == run.push.frames     # every C frame from the buffer
        return snaps, run.push.frames
    return snaps, (run.push.frames if native else 0)


async def compare_send(ops, room: bool = False) -> int:
    native, frames = await send_script(True, ops, room)
    python, _ = await send_script(False, ops)
    for i, (n, p) in enumerate(zip(native, python)):
        assert n == p, f"step {i} {ops[i]}: {sorted(k for k in n if n[k] != p[k])} differ"
    return frames


# `room`: the pushes are reads into a TcpPump's buffer (plain.c), framed and
# sealed there; the records on the wire are the same as the Sender's own
# (gathered) and the Python push's.
ROOM = pytest.mark.parametrize("room", [False, True], ids=["push", "room"])


@ROOM
async def test_small_chunks_are_framed_and_sealed_in_c(room):
    ops = [("push", KB), ("push", 1), ("push", 16 * KB - 9), ("push", 16 * KB - 8),
           ("push", 16 * KB), ("push", 32 * KB - 9), ("push", 40 * KB), ("push", 256 * KB)]
    assert await compare_send(ops, room) == len(ops)


@ROOM
async def test_what_c_does_not_take_goes_through_python_push(room):
    ops = [("push", KB), ("pushview", KB),
           ("writing", True), ("push", KB), ("writing", False),
           ("pause", None), ("push", KB), ("resume", None), ("push", KB),
           ("eof", None), ("push", KB)]
    assert await compare_send(ops, room) == 2     # the first and the one after resume


async def test_a_push_over_the_frame_size_goes_through_python_push():
    ops = [("push", 256 * KB + 1), ("push", KB)]
    assert await compare_send(ops) == 1


@ROOM
async def test_send_windows_exhaust_and_reopen_as_h2(room):
    """Past the server's 4 MiB stream window the push refuses (False), until
    the server reads and its WINDOW_UPDATEs come back."""
    ops = [("push", 256 * KB)] * 17 + [("read", None)] + [("push", 256 * KB)] * 3
    frames = await compare_send(ops, room)
    assert frames == 16 + 3


def test_a_pump_read_is_at_most_one_send_frame():
    """A read that fits the buffer fits one DATA frame (the Sender's send_max):
    a bigger one would always go the Python way."""
    from shoal.core.hbone.settings import SEND_FRAME_SIZE
    assert fastpath.native.PUMP_READ == SEND_FRAME_SIZE
    pump = fastpath.native.TcpPump(QueueEnd(), lambda data: True, deque(), None, None)
    assert len(pump.get_buffer(-1)) == SEND_FRAME_SIZE
    with pytest.raises(ValueError, match="more than its buffer"):
        pump.buffer_updated(SEND_FRAME_SIZE + 1)


async def test_a_refused_pump_read_is_queued_as_the_bytes_read():
    """A sink that is not a Sender (or a Sender that refuses) gets the read
    as bytes, and what it refuses is queued: data_received's way."""
    end, got = QueueEnd(), []
    pump = fastpath.native.TcpPump(end, lambda data: got.append(data) or False, deque(), None,
                                   None)
    pump.get_buffer(-1)[:5] = b"hello"
    pump.buffer_updated(5)
    assert got == [b"hello"] and end.queued == [b"hello"] and type(got[0]) is bytes


def test_a_released_pump_view_leaves_the_next_read_alone():
    """The buffer is the process's; each get_buffer is a view of its own,
    so one released by a caller does not spoil the next read."""
    got: list[bytes] = []
    pump = fastpath.native.TcpPump(QueueEnd(), lambda data: got.append(data) or True, deque(),
                                   None, None)
    pump.get_buffer(-1).release()
    view = pump.get_buffer(-1)
    view[:3] = b"abc"
    pump.buffer_updated(3)
    assert got == [b"abc"]


async def test_ztunnels_counting_end_takes_both_c_halves():
    """ztunnel's CountingEnd (its byte counts are the connection's metrics)
    must stay a plain TcpEnd to the C relay: both halves apply to it."""
    from shoal.ztunnel.proxy.inputs import CountingEnd
    run = Run(True)
    await run.start()
    try:
        theirs, mine = socket.socketpair()
        _, end = await asyncio.get_running_loop().create_connection(CountingEnd, sock=mine)
        pushed = [0, 0]
        run.s.set_sink(_counted(end, pushed, 0))
        sender = _counted(run.s, pushed, 1)
        end.set_sink(sender)
        run.send(("data", KB))
        run.deliver(0)
        assert run.frames == 1 and end.bytes_written == KB and pushed[0] == KB
        theirs.sendall(b"r" * 100)
        for _ in range(100):
            if run.link.s_tcp.out:
                break
            await asyncio.sleep(0)
        assert sender.frames == 1 and end.bytes_read == 100 and pushed[1] == 100
        run.link.pump()
        assert bytes(run.c._chunks[0][0]) == b"r" * 100
        end.transport.close()
        theirs.close()
    finally:
        run.close()


def test_a_uvloop_read_is_framed_in_the_pumps_buffer():
    """On uvloop the piped TcpEnd's socket is read into the TcpPump's buffer
    and the Sender seals it there: the bytes arrive whole and in order, and
    counted, with every frame framed in place."""
    from shoal.ztunnel.proxy.inputs import CountingEnd

    async def body():
        run = Run(True)
        await run.start()
        theirs, mine = socket.socketpair()
        try:
            _, end = await asyncio.get_running_loop().create_connection(CountingEnd, sock=mine)
            pushed = [0, 0]
            sender = _counted(run.s, pushed, 1)
            end.set_sink(sender)
            sent = bytes(range(256)) * 40
            theirs.sendall(sent)
            await until(lambda: pushed[1] == len(sent))
            run.link.pump()
            got = b"".join(bytes(d) for d, _ in run.c._chunks)
            assert got == sent and end.bytes_read == len(sent)
            assert sender.frames >= 1 and sender.in_place == sender.frames
        finally:
            end.transport.close()
            theirs.close()
            run.close()
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(body())
    finally:
        loop.close()


def _libcrypto():
    """The libcrypto _ssl uses (to leave an error in this thread's queue)."""
    import ctypes
    import ssl  # noqa: F401  (loads _ssl and its libcrypto)
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libcrypto" in line:
                lib = ctypes.CDLL(line.split()[-1])
                lib.ERR_peek_error.restype = ctypes.c_ulong
                return lib
    pytest.skip("no libcrypto mapped")


class _StaleErrorTransport:
    """The plain end's transport; each write leaves an OpenSSL error queued
    on this thread, as any other SSL object's or library's call may."""

    def __init__(self, real, lib) -> None:
        self.real, self.lib = real, lib

    def write(self, data) -> None:
        self.lib.ERR_new()
        self.lib.ERR_set_error(20, 100, None)       # ERR_LIB_SSL, any reason
        self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize("relay", [True, False], ids=["c", "python"])
async def test_an_openssl_error_left_during_a_read_is_not_this_connections(relay):
    """The relay writes a frame to the plain socket (Python runs) and reads
    on while a partial record waits: an error some other OpenSSL user left
    queued meanwhile must not fail this connection's read (SSL_get_error
    reads the thread's queue), as it does not on the Python path (_ssl
    clears the queue before each call)."""
    lib = _libcrypto()
    run = Run(relay)
    await run.start()
    real = run.end.transport
    try:
        run.end.transport = _StaleErrorTransport(real, lib)
        run.send(("data", KB))
        run.send(("data", KB))
        data = b"".join(run.link.c_tcp.out)
        run.link.c_tcp.out.clear()
        first = 5 + int.from_bytes(data[3:5], "big")     # the first TLS record
        assert len(data) > first + 10
        run.link.server.data_received(data[:first + 10])
        run.link.server.data_received(data[first + 10:])
        run.link.pump()
        await asyncio.sleep(0)
        snap = run.snapshot()
        assert snap["socket"] == bytes([0]) * KB + bytes([0]) * KB
        assert not run.link.server.app.core.dead
        assert run.frames == (2 if relay else 0)
    finally:
        lib.ERR_clear_error()
        run.end.transport = real
        run.close()
