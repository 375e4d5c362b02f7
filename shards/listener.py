"""An accept loop a worker can stop without resetting queued connections.

`asyncio.Server.close()` closes the listening socket at once, and the kernel
resets whatever sits in its accept queue. `Listener.close()` instead stops
watching the socket, accepts every connection already queued (they are
served like any other), then closes. Connections are tracked so a drain can
wait for them and, past its deadline, abort them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable


# Connections taken per readable event: bounded so one busy listener cannot
# starve the loop's other callbacks (uvicorn/Tornado use similar batches).
ACCEPT_BATCH = 64
# How often a drain re-checks whether tracked connections have closed.
DRAIN_POLL_INTERVAL = 0.02
# Connections a closing listener still takes from its queue (= the backlog
# the queue can hold at most).
FLUSH_LIMIT = 4096


class Listener:
    """Accepts on `sock` and runs `protocol_factory()` for each connection."""

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.BaseProtocol], *,
                 name: str, on_accept: Callable[[], None] | None = None,
                 on_close: Callable[[socket.socket], None] | None = None,
                 log: logging.Logger | None = None) -> None:
        self.sock = sock
        self.name = name
        self.address = sock.getsockname()
        self._factory = protocol_factory
        self._on_accept = on_accept
        self._on_close = on_close or (lambda s: s.close())
        self._log = log or logging.getLogger("shoal.listener")
        self._loop = asyncio.get_running_loop()
        self._transports: set[asyncio.Transport] = set()
        self._prune_at = 64
        self._pending = 0    # accepted, transport not made yet: a drain must wait for them
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        self._accept_some(ACCEPT_BATCH)

    def _accept_some(self, limit: int | None) -> int:
        n = 0
        while limit is None or n < limit:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:   # EMFILE, ENOBUFS...: keep the listener, log
                self._log.error("accept failed", extra={"fields": {"listener": self.name, "error": str(e)}})
                break
            n += 1
            # Linux copies the listener's TCP_NODELAY and keepalive settings
            # to accepted sockets (SocketFactory sets them): no syscalls here.
            conn.setblocking(False)
            self._pending += 1
            self._loop.create_task(self._start(conn))
        return n

    async def _start(self, conn: socket.socket) -> None:
        try:
            transport, _ = await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception as e:
            self._log.warning("connection setup failed", extra={"fields": {"listener": self.name,
                                                                           "error": str(e)}})
            conn.close()
            return
        finally:
            self._pending -= 1
        self._transports.add(transport)
        if len(self._transports) >= self._prune_at:
            self._prune()
            self._prune_at = max(64, 2 * len(self._transports))
        if self._on_accept is not None:
            self._on_accept()

    def _prune(self) -> None:
        self._transports = {t for t in self._transports if not t.is_closing()}

    @property
    def open_connections(self) -> int:
        self._prune()
        return len(self._transports) + self._pending

    def close(self) -> int:
        """Stop accepting: serve what is queued, then close. Returns how many were queued."""
        if self._closed:
            return 0
        self._closed = True
        self._loop.remove_reader(self.sock.fileno())
        # Bounded: on a socket shared with a newer worker (SIGHUP roll) new
        # connections keep arriving; the other worker serves those.
        queued = self._accept_some(FLUSH_LIMIT)
        self._on_close(self.sock)
        return queued

    async def wait_idle(self) -> None:
        """Return once every connection accepted here has closed."""
        while self.open_connections:
            await asyncio.sleep(DRAIN_POLL_INTERVAL)

    def abort_all(self) -> int:
        """Force: abort every open connection. Returns how many."""
        self._prune()
        n = len(self._transports)   # pending ones are cancelled with the loop
        for t in list(self._transports):
            t.abort()
        self._transports.clear()
        return n


def stream_protocol(handler, limit: int = 2 ** 16) -> Callable[[], asyncio.BaseProtocol]:
    """Protocol factory running `async handler(reader, writer)` per connection."""
    def factory() -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=limit)
        return asyncio.StreamReaderProtocol(reader, handler)
    return factory
