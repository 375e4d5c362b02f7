"""HbonePool: pooled HBONE client connections (ztunnel's proxy/pool.rs).

Invariants (as ztunnel's pool.rs):
- every (source identity, destination identity set, destination address)
  key gets its own dedicated connections; a connection is never shared by
  two keys, so a tunnel always runs under the identity it was opened for;
- a connection carries at most `max_streams_per_connection` (100) streams
  and never more than the peer's SETTINGS_MAX_CONCURRENT_STREAMS; the next
  open then creates another connection;
- spreading (shoal's own rule, settings.POOL_SPREAD_*): while a key has fewer
  than `pool_spread_connections` (4) live connections and the least-loaded one
  already carries `pool_spread_streams` (2), the next open creates another
  connection, so one worker's tunnels to a peer reach several of the peer's
  workers (the kernel's SO_REUSEPORT hash picks one per TCP connection);
  otherwise a stream goes on the least-loaded connection with room. A key
  whose tunnels end young (`pool_short_tunnel`, 1 s: request traffic, which
  shares TLS records and reads best on one connection) packs instead, on the
  oldest connection with room (ztunnel's rule), for `pool_spread_backoff`
  (30 s). A spread connection that fails costs nothing: the tunnel goes on an
  existing connection and that key does not spread for `pool_spread_backoff`;
- one connection attempt per key at a time (a per-key lock), so a burst of
  opens on a cold key makes one handshake, not N;
- a connection with no streams for `pool_idle_timeout` (5 min) is closed;
  a dead or GOAWAYed connection leaves the pool at once (its open streams
  finish on it); a CONNECT the peer refused unprocessed (REFUSED_STREAM, or
  above a graceful GOAWAY's last stream: a draining peer) is sent again once,
  on another connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from typing import Callable, Iterable

from shoal.core.addr import forwarded
from shoal.core.hbone import tlsio
from shoal.core.hbone.connection import LOG, HboneConnection
from shoal.core.hbone.errors import HboneError
from shoal.core.hbone.settings import DEFAULT_SETTINGS, HboneSettings
from shoal.core.hbone.stream import HboneStream

PoolKey = tuple[str, frozenset, tuple[str, int]]

# A CONNECT refused unprocessed (peer draining) is retried on a fresh
# connection; a second refusal means the peer refuses everything: give up.
OPEN_ATTEMPTS = 2


def traceparent() -> str:
    """A random W3C traceparent (ztunnel: a random trace per connection)."""
    return f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-01"


class HbonePool:
    """Opens tunnels over pooled mutual-TLS HTTP/2 connections.

    Args:
        context_for: `(src_identity) -> ssl.SSLContext` presenting the source
            workload's certificate (core.identity.tls.client_context).
        settings: limits and timers.
        socket_factory: optional `(family) -> socket` for marked / in-netns
            sockets (core.sockets); the pool connects it.
        log: logger.
    """

    def __init__(self, context_for: Callable[[object], ssl.SSLContext], *,
                 settings: HboneSettings = DEFAULT_SETTINGS,
                 socket_factory: Callable[[int], socket.socket] | None = None,
                 log: logging.Logger = LOG) -> None:
        self.context_for = context_for
        self.settings = settings
        self.socket_factory = socket_factory
        self.log = log
        self._conns: dict[PoolKey, list[HboneConnection]] = {}
        self._locks: dict[PoolKey, asyncio.Lock] = {}
        self._no_spread_until: dict[PoolKey, float] = {}
        self._idle_timers: dict[HboneConnection, asyncio.TimerHandle] = {}
        self.connections_opened = 0

    async def open(self, *, src, dst_identities: Iterable, address: tuple[str, int],
                   authority: str, forwarded_for=None, host: str | None = None,
                   baggage: str | None = None, headers: Iterable[tuple[str, str]] = ()
                   ) -> HboneStream:
        """Open one tunnel to `authority` through the proxy at `address`.

        Args:
            src: our workload identity (selects the client certificate).
            dst_identities: acceptable server identities (exactly one must match).
            address: the peer proxy, (ip, 15008).
            authority: CONNECT target "ip:port".
            forwarded_for: the original client (ip, port) for `forwarded`.
            host: the targeted service FQDN, added as `;host=`.
            baggage: the `baggage` header value.
            headers: extra (name, value) pairs.
        Returns:
            An open HboneStream (the server answered 200).
        Raises:
            HboneError: `.status` 401/503/400... if refused, 0 if the peer
                could not be reached, failed TLS or had the wrong identity.
        """
        block = [("traceparent", traceparent())]
        fwd = forwarded(forwarded_for, host)
        if fwd:
            block.append(("forwarded", fwd))
        if baggage:
            block.append(("baggage", baggage))
        block.extend(headers)
        key: PoolKey = (str(src), frozenset(str(i) for i in dst_identities),
                        (address[0], int(address[1])))
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            conn = await self._connection(key, src)
            stream = conn.open_stream(authority, block)
            self._touch(conn)
            try:
                async with asyncio.timeout(2 * self.settings.connect_timeout):
                    await stream.wait_open()
            except TimeoutError:
                stream.abort()
                raise HboneError(f"CONNECT {authority} via {address[0]}:{address[1]}: no "
                                 f"answer within {2 * self.settings.connect_timeout:g}s") from None
            except HboneError as e:
                stream.close()
                if not e.retryable or attempt == OPEN_ATTEMPTS:
                    raise
                self.log.debug("retrying CONNECT %s: %s", authority, e.reason)
                continue
            except BaseException:
                stream.close()
                raise
            return stream
        raise AssertionError("unreachable")   # pragma: no cover

    async def _connection(self, key: PoolKey, src) -> HboneConnection:
        conn = self._pick(key)
        if conn is not None:
            return conn
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            conn = self._pick(key)
            if conn is not None:
                return conn
            try:
                conn = await self._connect(key, src)
            except HboneError as e:
                # A connection opened only to spread: the existing ones serve.
                conn = self._pick(key, spread=False)
                if conn is None:
                    raise
                self.log.info("HBONE: no extra connection to %s:%d (%s); not spreading for "
                              "%gs", key[2][0], key[2][1], e.reason,
                              self.settings.pool_spread_backoff)
                self._hold_spreading(key)
                return conn
            self._conns.setdefault(key, []).append(conn)
            return conn

    def _pick(self, key: PoolKey, spread: bool = True) -> HboneConnection | None:
        """The connection for the next stream of `key`, or None: open one."""
        conns = self._conns.get(key)
        if not conns:
            return None
        live = [c for c in conns if c.usable]
        if len(live) != len(conns):
            self._conns[key] = live
        spread = spread and not self._spread_held(key)
        best = None
        for conn in live:
            if conn.capacity > 0:
                if not spread:
                    return conn       # pack: the oldest with room
                if best is None or len(conn.streams) < len(best.streams):
                    best = conn       # spread: the least loaded, the oldest on ties
        if (best is not None and len(live) < self.settings.pool_spread_connections
                and len(best.streams) >= self.settings.pool_spread_streams):
            return None
        return best

    def _hold_spreading(self, key: PoolKey) -> None:
        self._no_spread_until[key] = time.monotonic() + self.settings.pool_spread_backoff

    def _spread_held(self, key: PoolKey) -> bool:
        until = self._no_spread_until.get(key)
        if until is not None and time.monotonic() >= until:
            del self._no_spread_until[key]
            until = None
        return until is not None

    def _stream_done(self, key: PoolKey, stream: HboneStream) -> None:
        if time.monotonic() - stream.opened_at < self.settings.pool_short_tunnel:
            self._hold_spreading(key)

    async def _connect(self, key: PoolKey, src) -> HboneConnection:
        host, port = key[2]
        loop = asyncio.get_running_loop()
        ctx = self.context_for(src)

        def factory() -> HboneConnection:
            return HboneConnection(client=True, settings=self.settings,
                                   expected_identities=tuple(key[1]),
                                   on_idle=self._on_idle, log=self.log,
                                   on_stream_done=lambda stream: self._stream_done(key, stream))
        conn = factory()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                sock = await self._socket(host, port) if self.socket_factory else None
                await tlsio.connect(loop, conn, ctx, host=host, port=port, sock=sock,
                                    timeout=self.settings.connect_timeout)
                await conn.ready
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
            what = "timed out" if isinstance(e, asyncio.TimeoutError) else str(e)
            raise HboneError(f"HBONE connection to {host}:{port} failed: {what} (is port {port} "
                             f"reachable, e.g. not blocked by a NetworkPolicy, and the peer's "
                             f"certificate from our trust bundle?)") from e
        self.connections_opened += 1
        return conn

    async def _socket(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        factory = self.socket_factory
        assert factory is not None          # _connect calls this only when it is set
        sock = factory(family)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    # -- idle release -------------------------------------------------------

    def _touch(self, conn: HboneConnection) -> None:
        timer = self._idle_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _on_idle(self, conn: HboneConnection) -> None:
        self._touch(conn)
        self._idle_timers[conn] = conn.loop.call_later(
            self.settings.pool_idle_timeout, self._release_if_idle, conn)

    def _release_if_idle(self, conn: HboneConnection) -> None:
        self._idle_timers.pop(conn, None)
        if conn.streams:
            return
        idle = time.monotonic() - conn.idle_since
        self.log.debug("releasing HBONE connection idle for %.0fs", idle)
        for key, conns in list(self._conns.items()):
            if conn in conns:
                conns.remove(conn)
                if not conns:
                    del self._conns[key]
                    self._no_spread_until.pop(key, None)
        conn.close()

    def stats(self) -> dict:
        """Connections and streams per key (for /config_dump)."""
        return {f"{k[0]}->{sorted(k[1])}@{k[2][0]}:{k[2][1]}":
                [len(c.streams) for c in v] for k, v in self._conns.items()}

    async def close(self) -> None:
        """Close every pooled connection (GOAWAY)."""
        for timer in self._idle_timers.values():
            timer.cancel()
        self._idle_timers.clear()
        conns = [c for v in self._conns.values() for c in v]
        self._conns.clear()
        for conn in conns:
            conn.close()
        if conns:
            await asyncio.wait([c.closed for c in conns], timeout=1.0)
