"""HBONE limits and timers, with Istio's values (reference/istio-ztunnel.md §2).

Every number here is part of what a peer ztunnel expects from us, so each one
matches ztunnel's (src/proxy/h2.rs, src/proxy/pool.rs, src/config.rs) unless
the comment says otherwise. `HboneSettings` lets tests shrink the timers.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.core.hbone.h2limits import DEFAULT_LIMITS, H2Limits

KIB = 1024
MIB = 1024 * KIB

# HTTP2_STREAM_WINDOW_SIZE: one stream may have 4 MiB in flight, enough for a
# 10 Gbit/s flow at ~3 ms RTT; it is also the most a stream can buffer on the
# receiving side before the sender must stop (our memory bound per stream).
STREAM_WINDOW = 4 * MIB
# HTTP2_CONNECTION_WINDOW_SIZE: 4x the stream window so that four busy streams
# cannot starve the others of connection window (cross-stream deadlock).
CONNECTION_WINDOW = 16 * MIB
# HTTP2_FRAME_SIZE: large DATA frames keep per-frame overhead low.
MAX_FRAME_SIZE = 1 * MIB
# ztunnel's client accepts response headers up to 16 KiB, its server request
# headers up to 64 KiB (hyper's defaults); larger header blocks are refused
# with 431 (server) or a stream reset (client), the connection survives.
CLIENT_MAX_HEADER_LIST = 16 * KIB
SERVER_MAX_HEADER_LIST = 64 * KIB
# Above this the HPACK decoder itself gives up and the whole connection is
# closed (GOAWAY ENHANCE_YOUR_CALM): decoding must finish to keep the shared
# HPACK state, so this bounds the memory one header block may take.
HEADER_DECODE_HARD_LIMIT = 256 * KIB
# POOL_MAX_STREAMS_PER_CONNECTION: after 100 streams the pool opens a new
# connection (also never more than the peer's SETTINGS_MAX_CONCURRENT_STREAMS).
MAX_STREAMS_PER_CONNECTION = 100
# Spreading (shoal's, not ztunnel's): a key's first POOL_SPREAD_CONNECTIONS
# connections take at most POOL_SPREAD_STREAMS streams each before the next
# one opens; past that, a stream goes to the least-loaded connection (still at
# most MAX_STREAMS_PER_CONNECTION each). Why: one HBONE connection is served by
# one worker process on each side (the peer's SO_REUSEPORT hash picks one per
# TCP connection), so a worker whose tunnels to a peer share one connection
# puts all of them on one peer worker, i.e. one core (Istio #51305 is the same
# effect on Envoy's threads). With 4 connections per worker and key the
# kernel's hash leaves a 2-worker peer idle with probability 1/8, not 1/2; two
# streams per connection keep a key with one or two tunnels (most keys) on one
# connection, as before. Measured in docs/bench/hbone.md (8 streams, 2 workers).
POOL_SPREAD_CONNECTIONS = 4
POOL_SPREAD_STREAMS = 2
# Spreading pays for long tunnels (bulk: a core per peer worker) and costs
# short ones: request tunnels packed on one connection share its TLS records
# and reads, and spread over 4 they cost 14% more CPU per connection
# (docs/bench/hbone.md). A tunnel that ends younger than this marks its key as
# request traffic: the key packs (ztunnel's rule: the oldest connection with
# room) instead of spreading, for POOL_SPREAD_BACKOFF.
POOL_SHORT_TUNNEL = 1.0
# How long a reason not to spread holds for a key: a short tunnel ended (above),
# or an extra connection failed (peer at its connection or handshake limit,
# unreachable), after which the tunnel goes on an existing connection and
# later opens must not each pay a failed handshake.
POOL_SPREAD_BACKOFF = 30.0
# ztunnel's server advertises 200 concurrent streams.
SERVER_MAX_CONCURRENT_STREAMS = 200
# POOL_UNUSED_RELEASE_TIMEOUT: idle pooled connections are closed after 5 min.
POOL_IDLE_TIMEOUT = 300.0
# PING keepalive: every 10 s; a PING unanswered for 20 s means the peer is dead.
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_TIMEOUT = 20.0
# ztunnel's connect timeout for the TCP + TLS handshake to a peer.
CONNECT_TIMEOUT = 10.0
# Plaintext reads: large reads amortise the per-call Python cost (the kernel
# usually has far less, so this mostly caps a single DATA frame batch).
READ_SIZE = 256 * KIB
# We stop reading a plaintext socket while this much is queued towards the
# HBONE connection's TLS transport (asyncio's write-buffer high-water mark).
WRITE_HIGH_WATER = 1 * MIB
# Largest DATA frame we send: a receiver parses a frame only once all of it has
# arrived, so huge frames add latency and copying for no gain.
SEND_FRAME_SIZE = 256 * KIB


@dataclass(frozen=True, slots=True, kw_only=True)
class HboneSettings:
    """Timers and limits of one HBONE endpoint; validated, nothing else."""

    stream_window: int = STREAM_WINDOW
    connection_window: int = CONNECTION_WINDOW
    max_frame_size: int = MAX_FRAME_SIZE
    max_streams_per_connection: int = MAX_STREAMS_PER_CONNECTION
    pool_spread_connections: int = POOL_SPREAD_CONNECTIONS
    pool_spread_streams: int = POOL_SPREAD_STREAMS
    pool_spread_backoff: float = POOL_SPREAD_BACKOFF
    pool_short_tunnel: float = POOL_SHORT_TUNNEL
    server_max_concurrent_streams: int = SERVER_MAX_CONCURRENT_STREAMS
    client_max_header_list: int = CLIENT_MAX_HEADER_LIST
    server_max_header_list: int = SERVER_MAX_HEADER_LIST
    pool_idle_timeout: float = POOL_IDLE_TIMEOUT
    keepalive_interval: float = KEEPALIVE_INTERVAL
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    h2_limits: H2Limits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        # RFC 9113 §6.5.2: windows are at most 2^31-1, frames 2^14..2^24-1.
        if not 65_535 <= self.stream_window <= 2**31 - 1:
            raise ValueError(f"stream_window {self.stream_window} out of 65535..2^31-1")
        if not self.stream_window <= self.connection_window <= 2**31 - 1:
            raise ValueError("connection_window must be >= stream_window and < 2^31")
        if not 16_384 <= self.max_frame_size <= 2**24 - 1:
            raise ValueError(f"max_frame_size {self.max_frame_size} out of 16384..2^24-1")
        if min(self.max_streams_per_connection, self.server_max_concurrent_streams,
               self.pool_spread_connections, self.pool_spread_streams) < 1:
            raise ValueError("stream and connection limits must be >= 1")
        if min(self.client_max_header_list, self.server_max_header_list) < 1024:
            raise ValueError("header list limits must be >= 1 KiB")
        if self.server_max_header_list > HEADER_DECODE_HARD_LIMIT:
            raise ValueError(f"server_max_header_list above {HEADER_DECODE_HARD_LIMIT}")
        if self.pool_short_tunnel < 0:
            raise ValueError("pool_short_tunnel must be >= 0 (0: no tunnel counts as short)")
        for name in ("pool_idle_timeout", "keepalive_interval", "keepalive_timeout",
                     "connect_timeout", "pool_spread_backoff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")


DEFAULT_SETTINGS = HboneSettings()
