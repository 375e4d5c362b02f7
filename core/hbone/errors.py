"""HBONE errors: every one carries an HTTP status and/or an h2 error code.

Like h11/h2, `Local...` means *we* were asked to do something the protocol
does not allow, `Remote...` means the peer broke it. `HboneError` is what the
asyncio API raises to its callers (ztunnel, waypoint): `status` is the HTTP
status of a refused CONNECT (0 when no response came, e.g. TLS failed), and
`reason` is a sentence an operator can act on.
"""

from __future__ import annotations

from h2.errors import ErrorCodes


class HboneError(Exception):
    """A tunnel could not be opened or died.

    Attributes:
        status: HTTP status from the server (401, 503, 400, 431...), or 0.
        error_code: h2 error code of a reset/GOAWAY, or None.
        reason: operator-facing explanation.
    """

    def __init__(self, reason: str, *, status: int = 0,
                 error_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.error_code = error_code

    @property
    def retryable(self) -> bool:
        """The peer refused the stream without processing it (REFUSED_STREAM,
        or above the last stream id of a graceful GOAWAY): opening it again,
        on another connection, is safe (RFC 9113 §8.7)."""
        return self.error_code == ErrorCodes.REFUSED_STREAM

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.reason!r}, status={self.status}, "
                f"error_code={self.error_code})")


class ProtocolError(HboneError):
    """Base of the two-sided protocol errors (h2-level)."""


class LocalProtocolError(ProtocolError):
    """We tried something HTTP/2 or HBONE forbids (a bug in our caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not valid HTTP/2 / HBONE, or exceeded one
    of the abuse limits (`limit` names it, core.hbone.h2limits); the
    connection is dead."""

    def __init__(self, reason: str, *, limit: str | None = None, **kw) -> None:
        super().__init__(reason, **kw)
        self.limit = limit


class PeerIdentityError(HboneError):
    """The TLS peer's SPIFFE identity or ALPN is not acceptable."""


class StreamResetError(HboneError, ConnectionResetError):
    """The tunnel was reset (RST_STREAM received or the connection died).

    Also a ConnectionResetError, so byte-copying code treats a reset tunnel
    exactly like a reset TCP socket."""


__all__ = ["ErrorCodes", "HboneError", "LocalProtocolError", "PeerIdentityError",
           "ProtocolError", "RemoteProtocolError", "StreamResetError"]
