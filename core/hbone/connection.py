"""HboneConnection: the thin asyncio adapter between a TLS transport and the
sans-IO core (`core.hbone.protocol`), for both roles.

`data_received → core.receive_data → dispatch events → transport.write(core.data_to_send())`.

- Identity is checked in `connection_made`, i.e. right after the TLS
  handshake and before any HTTP/2 byte: the client requires the server's SPIFFE
  ID to be one of the expected ones, the server requires the client to be in
  its trust domain (the principal goes to the handler for authorization).
- Backpressure: inbound bytes are bounded by flow control (acknowledged when
  read); outbound, `pause_writing` from the transport makes stream writers wait.
- Keepalive: a PING every `keepalive_interval`; one unanswered for
  `keepalive_timeout` means the peer is dead: every stream fails, the
  transport is aborted.
- Graceful shutdown: `start_drain()` (server) sends GOAWAY(NO_ERROR) and the
  connection closes by itself once its last stream is released; a client
  that received such a GOAWAY closes likewise once its streams are done.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Callable

from h2.errors import ErrorCodes

from shoal.core import log as shoal_log
from shoal.core import overload
from shoal.core.addr import hostport
from shoal.core.hbone import events as ev
from shoal.core.hbone import fastpath, h2fast
from shoal.core.hbone.errors import (HboneError, PeerIdentityError, RemoteProtocolError,
                               StreamResetError)
from shoal.core.hbone.protocol import CLOSED, OPEN, HboneClientProtocol, HboneServerProtocol
from shoal.core.hbone.settings import (DEFAULT_SETTINGS, SEND_FRAME_SIZE, WRITE_HIGH_WATER,
                                       HboneSettings)
from shoal.core.hbone.stream import HOLD_SEND_WINDOW, HboneStream
from shoal.core.identity.spiffe import (Identity, IdentityError, verify_client_trust_domain,
                                  verify_server_identity)

LOG = shoal_log.get("hbone")


class HboneConnection(asyncio.Protocol):
    """One HBONE connection (TLS + HTTP/2), client or server role.

    Args:
        client: True for the initiator (pool), False for a server connection.
        expected_identities: client only: acceptable server SPIFFE IDs.
        trust_domain: server only: required client trust domain (None: any).
        on_request: server only: called with (connection, TunnelRequested).
        on_idle: called when the last stream is released (pool idle timer).
        on_stream_done: called with each released stream (pool: tunnel lifetimes).
    """

    def __init__(self, *, client: bool, settings: HboneSettings = DEFAULT_SETTINGS,
                 expected_identities=(), trust_domain: str | None = None,
                 on_request: Callable | None = None, on_idle: Callable | None = None,
                 on_stream_done: Callable[[HboneStream], None] | None = None,
                 log: logging.Logger = LOG) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.settings = settings
        self.core = (HboneClientProtocol if client else HboneServerProtocol)(settings)
        self.expected_identities = tuple(expected_identities)
        self.trust_domain = trust_domain
        self.on_request = on_request
        self.on_idle = on_idle
        self.on_stream_done = on_stream_done
        self.log = log
        self.transport: asyncio.Transport | None = None
        self.peer_identity: Identity | None = None
        self.peer_address = None
        self.local_address = None
        self.streams: dict[int, HboneStream] = {}
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.ready: asyncio.Future = self.loop.create_future()
        self.closed: asyncio.Future = self.loop.create_future()
        self.error: HboneError | None = None
        self.idle_since = time.monotonic()
        self._ping: tuple[bytes, float] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._drain_requested = False
        self._drain_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    # asyncio.Protocol declares a BaseTransport; ours is always a Transport
    # (tlsio.TlsTransport), whose write side flush() uses.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.peer_address = transport.get_extra_info("peername")
        self.local_address = transport.get_extra_info("sockname")
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, ValueError):
                pass
        try:
            self._verify_peer(transport.get_extra_info("ssl_object"))
        except HboneError as e:
            self.log.warning("HBONE peer refused: %s", e.reason, extra={"fields": {
                "peer": _addr(self.peer_address), "reason": e.reason}})
            self._die(e, abort=True)
            return
        self.core.initiate()
        if self._drain_requested:
            self._begin_drain()
        self.flush()
        self._schedule_keepalive()
        if not self.ready.done():
            self.ready.set_result(self)

    def _verify_peer(self, ssl_object) -> None:
        if ssl_object is None:
            raise PeerIdentityError("HBONE requires TLS; got a plaintext transport")
        alpn = ssl_object.selected_alpn_protocol()
        if alpn != "h2":
            raise PeerIdentityError(f"peer negotiated ALPN {alpn!r}, HBONE needs 'h2'")
        try:
            if self.client:
                self.peer_identity = verify_server_identity(ssl_object, self.expected_identities)
            elif self.trust_domain is not None:
                self.peer_identity = verify_client_trust_domain(ssl_object, self.trust_domain)
            else:
                from shoal.core.identity.spiffe import peer_identity
                self.peer_identity = peer_identity(ssl_object)
        except IdentityError as e:
            raise PeerIdentityError(f"{e} (check the peer's certificate and the expected "
                                    f"SPIFFE identities)") from e

    def data_received(self, data: bytes) -> None:
        self._handle(self.core.receive_data, data)

    # The optional direct-receive interface of core.hbone.tlsio: the TLS layer
    # decrypts a large DATA body straight into the buffer the core gives.
    def receive_buffer(self) -> memoryview | None:
        return self.core.receive_buffer()

    def received_into(self, n: int) -> None:
        self._handle(self.core.received_into, n)

    # The optional C receive path of core.hbone.tlsio (core/hbone/native/
    # relay.c): whole DATA frames for streams piped to a plain TCP end go
    # straight to its socket; it does what data_received → _handle would.
    def native_relay(self, sslsock, raw):
        """The C relay for this connection's TLS (`sslsock`, on `raw`), or None."""
        native = fastpath.native
        if native is None or type(self)._handle is not HboneConnection._handle:
            return None
        return native.Relay(sslsock, self, raw, h2fast.RECV_OK_CONNECTION, h2fast.RECV_OK_STREAM,
                            CLOSED, h2fast.DIRECT_BODY_MIN)

    def native_sender(self, stream: HboneStream, push, pushed: list, i: int, source=None):
        """core.pipe's `push` into `stream` in C (core/hbone/native/send.c),
        or None when this connection's TLS is not on the C record calls.
        With `source`, the push is write_held's (holds `source`)."""
        native = fastpath.native
        tls = getattr(self.transport, "native_tls", None)
        parts = tls() if tls is not None else None
        if (native is None or parts is None
                or type(stream)._send_now is not HboneStream._send_now
                or type(stream).write_nowait is not HboneStream.write_nowait
                or type(stream).write_held is not HboneStream.write_held):
            return None
        proto, sslsock, raw = parts
        return native.Sender(stream, push, pushed, i, self, proto, sslsock, raw,
                             h2fast.SEND_OK_CONNECTION, h2fast.SEND_OK_STREAM, OPEN,
                             SEND_FRAME_SIZE, source, HOLD_SEND_WINDOW)

    def _handle(self, feed, arg) -> None:
        try:
            events = feed(arg)
        except RemoteProtocolError as e:
            self.log.warning("HBONE peer %s: %s; closing", _addr(self.peer_address), e.reason,
                             extra={"fields": {"peer": _addr(self.peer_address),
                                               "peer_identity": str(self.peer_identity),
                                               "limit": e.limit}})
            if e.limit is not None:
                overload.count_h2_limit(e.limit)
            self.flush()                       # the GOAWAY
            # A peer that stopped reading would hold a graceful close open;
            # any other gets the GOAWAY before the socket goes (LINGER_CLOSE).
            self._die(e, abort=e.limit == "outbound_control_frames", linger=True)
            return
        for event in events:
            self._DISPATCH[type(event)](self, event)
        self.flush()
        self._close_if_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"HBONE connection to {_addr(self.peer_address)} lost"
        if exc is not None:
            reason += f": {exc}"
        self._die(self.error or StreamResetError(reason), abort=False)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()
        for stream in list(self.streams.values()):
            stream._release_held()          # sources held over the mark (write_held)

    # -- used by streams, pool and server -----------------------------------

    def flush(self) -> None:
        chunks = self.core.chunks_to_send()
        t = self.transport
        if t is not None and not t.is_closing():
            if chunks:
                t.writelines(chunks)
            if not t.get_write_buffer_size():
                self.core.output_drained()

    def open_stream(self, authority: str, headers=()) -> HboneStream:
        """Client: send a CONNECT; `await stream.wait_open()` for the 200."""
        # open_stream is the client's: its core is an HboneClientProtocol
        stream_id = self.core.open_tunnel(authority, headers)  # type: ignore[union-attr]
        stream = self.streams[stream_id] = HboneStream(self, stream_id, authority)
        self.flush()
        return stream

    @property
    def usable(self) -> bool:
        return (self.error is None and not self.core.dead and not self.core.goaway_received
                and not self.core.draining
                and self.transport is not None and not self.transport.is_closing())

    @property
    def capacity(self) -> int:
        """Streams this connection may still take (pool limit and peer's limit)."""
        limit = min(self.settings.max_streams_per_connection,
                    self.core.remote_max_concurrent_streams)
        return limit - len(self.streams)

    def start_drain(self) -> None:
        """Graceful shutdown (server role): GOAWAY(NO_ERROR) in two steps
        (core.hbone.protocol): open tunnels go on, CONNECTs already on the
        wire are served, later ones refused (REFUSED_STREAM, the client
        retries elsewhere); the connection closes itself after its last stream."""
        if self.transport is None:
            self._drain_requested = True        # before the handshake finished
            return
        self._begin_drain()
        self.flush()
        self._close_if_drained()

    def _begin_drain(self) -> None:
        self.core.start_drain()
        if self._drain_timer is None:
            # A client that does not answer the announcement's PING is as
            # dead as one that ignores a keepalive: stop waiting for it then.
            self._drain_timer = self.loop.call_later(self.settings.keepalive_timeout,
                                                     self._finish_drain)

    def _finish_drain(self) -> None:
        self.core.finish_drain()
        self.flush()
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        closing = self.core.drained or (self.client and self.core.goaway_received)
        if closing and not self.streams and not self.core.open_streams and not self.core.dead:
            self.close()

    def close(self, error_code: int = ErrorCodes.NO_ERROR, reason: str = "") -> None:
        """GOAWAY, then close the transport once written."""
        self.core.close(error_code, reason)
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def stream_done(self, stream: HboneStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            if self.on_stream_done is not None:
                self.on_stream_done(stream)
            if not self.streams:
                self.idle_since = time.monotonic()
                if self.on_idle is not None:
                    self.on_idle(self)
                self._close_if_drained()

    def _die(self, error: HboneError, *, abort: bool, linger: bool = False) -> None:
        if self.error is None:
            self.error = error
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        for stream in list(self.streams.values()):
            stream._fail(StreamResetError(f"tunnel {stream.authority}: {error.reason}",
                                          error_code=error.error_code))
        self.can_write.set()                  # release writers; they see the error
        if self.transport is not None:
            if abort:
                self.transport.abort()
            elif linger and hasattr(self.transport, "linger_close"):
                self.transport.linger_close()
            else:
                self.transport.close()

    # -- keepalive ----------------------------------------------------------

    def _schedule_keepalive(self) -> None:
        self._keepalive = self.loop.call_later(self.settings.keepalive_interval, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        if self._ping is not None:
            if now - self._ping[1] >= self.settings.keepalive_timeout:
                reason = (f"HBONE peer {_addr(self.peer_address)} did not answer PING for "
                          f"{self.settings.keepalive_timeout:g}s; connection considered dead")
                self.log.warning(reason)
                self._die(StreamResetError(reason), abort=True)
                return
        else:
            self._ping = (self.core.ping(), now)
            self.flush()
        self._schedule_keepalive()

    # -- event handlers -----------------------------------------------------

    def _on_data(self, e: ev.DataReceived) -> None:
        stream = self.streams.get(e.stream_id)
        if stream is None:
            self.core.acknowledge(e.stream_id, e.flow_controlled_length)
        else:
            stream._feed(e.data, e.flow_controlled_length)

    def _on_ended(self, e: ev.StreamEnded) -> None:
        stream = self.streams.get(e.stream_id)
        if stream is not None:
            stream._feed_eof()

    def _on_reset(self, e: ev.StreamReset) -> None:
        stream = self.streams.get(e.stream_id)
        if stream is None:
            return
        if e.error_code == ErrorCodes.REFUSED_STREAM:
            why = (f"tunnel {stream.authority} refused by {_addr(self.peer_address)} "
                   f"(REFUSED_STREAM: it is shutting down; not processed, safe to retry)")
        else:
            why = f"tunnel {stream.authority} reset by peer (h2 error {e.error_code})"
        stream._fail(StreamResetError(why, error_code=e.error_code))

    def _on_window(self, e: ev.WindowOpened) -> None:
        if e.stream_id == 0:
            for each in list(self.streams.values()):
                each._window_opened()
        else:
            stream = self.streams.get(e.stream_id)
            if stream is not None:
                stream._window_opened()

    def _on_opened(self, e: ev.TunnelOpened) -> None:
        stream = self.streams.get(e.stream_id)
        if stream is not None:
            stream._set_open(e.headers)

    def _on_refused(self, e: ev.TunnelRefused) -> None:
        stream = self.streams.get(e.stream_id)
        if stream is not None:
            stream._fail(HboneError(f"CONNECT {stream.authority} via {_addr(self.peer_address)} "
                                    f"refused: {e.reason}", status=e.status))

    def _on_requested(self, e: ev.TunnelRequested) -> None:
        if self.on_request is None:
            # TunnelRequested comes only from a server's HboneServerProtocol core
            self.core.reject(e.stream_id, 503)  # type: ignore[union-attr]
            return
        stream = self.streams[e.stream_id] = HboneStream(self, e.stream_id, e.authority)
        self.on_request(self, stream, e)

    def _on_rejected(self, e: ev.TunnelRejected) -> None:
        self.log.warning("HBONE request refused with %d: %s", e.status, e.reason,
                         extra={"fields": {"peer": _addr(self.peer_address),
                                           "peer_identity": str(self.peer_identity),
                                           "status": e.status}})

    def _on_ping_ack(self, e: ev.PingAcked) -> None:
        if self._ping is not None and self._ping[0] == e.payload:
            self._ping = None

    def _on_goaway(self, e: ev.ConnectionClosed) -> None:
        # NO_ERROR: the core already refused (StreamReset) the streams above
        # last_stream_id; the others complete normally (RFC 9113 §6.8).
        self.log.debug("HBONE peer %s sent GOAWAY (%d, last stream %d) %s",
                       _addr(self.peer_address), e.error_code, e.last_stream_id, e.reason)
        if e.error_code == ErrorCodes.NO_ERROR:
            return
        for stream in list(self.streams.values()):
            stream._fail(StreamResetError(f"tunnel {stream.authority}: peer sent GOAWAY "
                                          f"({e.error_code}) {e.reason}".rstrip(),
                                          error_code=e.error_code))

    def _ignore(self, e: ev.Event) -> None:
        pass

    # event type -> handler; each handler takes the one event type it is keyed by
    _DISPATCH: dict[type, Callable[[HboneConnection, Any], None]] = {
        ev.DataReceived: _on_data, ev.StreamEnded: _on_ended, ev.StreamReset: _on_reset,
        ev.WindowOpened: _on_window, ev.TunnelOpened: _on_opened,
        ev.TunnelRefused: _on_refused, ev.TunnelRequested: _on_requested,
        ev.TunnelRejected: _on_rejected, ev.PingAcked: _on_ping_ack,
        ev.SettingsChanged: _ignore, ev.ConnectionClosed: _on_goaway,
    }


def _addr(address) -> str:
    return hostport(address[0], address[1]) if address else "?"
