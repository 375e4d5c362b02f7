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

import pytest

from shoal.benchmarks.load.bench_hbone_tls import Link
from shoal.core.hbone import fastpath
from shoal.core.pipe import TcpEnd, _counted
from tests.helpers.pki import TestPKI

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


class SendRun:
    """The client's tunnel fed by core.pipe's push, as a TcpEnd would; the
    server's stream has no sink, so what arrives queues for read()."""

    def __init__(self, native: bool) -> None:
        self.native = native

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

    def do(self, op) -> bool | None:
        kind, arg = op
        conn = self.link.client_conn
        if kind == "push":
            return self.push(bytes([arg % 251]) * arg)
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


async def send_script(native: bool, ops):
    run = SendRun(native)
    await run.start()
    snaps = [run.snapshot(run.do(op)) for op in ops]
    return snaps, (run.push.frames if native else 0)


async def compare_send(ops) -> int:
    native, frames = await send_script(True, ops)
    python, _ = await send_script(False, ops)
    for i, (n, p) in enumerate(zip(native, python)):
        assert n == p, f"step {i} {ops[i]}: {sorted(k for k in n if n[k] != p[k])} differ"
    return frames


async def test_small_chunks_are_framed_and_sealed_in_c():
    ops = [("push", KB), ("push", 1), ("push", 16 * KB - 9), ("push", 16 * KB - 8),
           ("push", 40 * KB), ("push", 256 * KB)]
    assert await compare_send(ops) == len(ops)


async def test_what_c_does_not_take_goes_through_python_push():
    ops = [("push", KB), ("pushview", KB), ("push", 256 * KB + 1),
           ("writing", True), ("push", KB), ("writing", False),
           ("pause", None), ("push", KB), ("resume", None), ("push", KB),
           ("eof", None), ("push", KB)]
    assert await compare_send(ops) == 2       # the first and the one after resume


async def test_send_windows_exhaust_and_reopen_as_h2():
    """Past the server's 4 MiB stream window the push refuses (False), until
    the server reads and its WINDOW_UPDATEs come back."""
    ops = [("push", 256 * KB)] * 17 + [("read", None)] + [("push", 256 * KB)] * 3
    frames = await compare_send(ops)
    assert frames == 16 + 3


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
