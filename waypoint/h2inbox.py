"""Received DATA of one HTTP/2 stream, for both of the waypoint's h2 sides.

Chunks wait in a queue with their flow-controlled length and the window is
reopened only when the consumer reads them, so a slow reader bounds what the
peer may send (no unbounded buffering). The owner puts `(data, flow)`
tuples, an exception, or None for the end.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import h2.exceptions
from h2.connection import H2Connection


class H2Owner(Protocol):
    """The connection a stream belongs to (either side's)."""

    @property
    def h2(self) -> H2Connection: ...

    async def flush(self) -> None: ...


class H2Inbox:
    """Base for a stream object with `conn` (`.h2`, async `.flush()`) and `sid`."""

    conn: H2Owner
    sid: int

    def _init_inbox(self) -> None:
        self.chunks: asyncio.Queue = asyncio.Queue()

    async def read(self) -> bytes:
        """Body bytes; b"" at the end. Raises what the owner queued as an error."""
        item = await self.chunks.get()
        if item is None:
            return b""
        if isinstance(item, Exception):
            raise item
        data, flow = item
        if flow:
            try:
                self.conn.h2.acknowledge_received_data(flow, self.sid)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass    # the stream ended meanwhile: no window left to reopen
            await self.conn.flush()
        return data
