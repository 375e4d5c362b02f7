"""Events the sans-IO HBONE core emits (past tense: facts about the wire).

Frozen, slotted, keyword-only dataclasses. Every event but the connection
ones names its `stream_id`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelRequested(Event):
    """Server: a well-formed CONNECT arrived; answer with accept() or reject()."""

    stream_id: int
    authority: str
    host: str            # IP literal (brackets stripped) or DNS name
    port: int
    headers: dict[str, str] = field(default_factory=dict)   # non-pseudo, lowercase names
    stream_ended: bool = False   # the client half-closed together with the request


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelRejected(Event):
    """Server: the core answered a bad request itself (400, 431)."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelOpened(Event):
    """Client: the server answered 200; data may flow both ways."""

    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelRefused(Event):
    """Client: the server answered something else than 200 (or headers too large)."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived(Event):
    """Tunnel bytes. Call `acknowledge(stream_id, flow_controlled_length)`
    once they are consumed: that, and only that, reopens the peer's window."""

    stream_id: int
    data: bytes
    flow_controlled_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded(Event):
    """The peer half-closed (END_STREAM): carry it on as a TCP FIN."""

    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset(Event):
    """The stream is gone (RST_STREAM from the peer): carry it on as a TCP RST."""

    stream_id: int
    error_code: int
    remote: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowOpened(Event):
    """The peer opened send window (stream_id 0: the whole connection)."""

    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PingAcked(Event):
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsChanged(Event):
    """The peer's settings; the pool reads max_concurrent_streams."""

    max_concurrent_streams: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """GOAWAY received: no new streams; streams above last_stream_id are dead."""

    error_code: int
    last_stream_id: int
    reason: str = ""
