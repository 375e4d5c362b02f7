"""Listeners that outlive their worker: per-slot sockets and the USR2 handoff.

Why: closing a SO_REUSEPORT listener resets every connection still in its
accept queue (`net.ipv4.tcp_migrate_req` is 0 by default and we do not touch
host sysctls). So a listener is created once per worker *slot* and is never
closed while the slot exists (Envoy's hot restart hands listeners over the
same way):
- a worker opens its listeners through `SlotSocketFactory`; a new listener
  is sent (SCM_RIGHTS over the worker's control socket) to the supervisor,
  which keeps a copy for the slot;
- the next worker of that slot (restart after a crash, SIGHUP roll) inherits
  the supervisor's copies across fork and reuses them by key, so the accept
  queue the kernel filled meanwhile is served, not reset;
- on SIGUSR2 the new supervisor inherits every slot's sockets across exec
  (`SHOAL_LISTEN_FDS`, like gunicorn's GUNICORN_FD and systemd's LISTEN_FDS).

Control messages (worker -> supervisor, SOCK_SEQPACKET, one per datagram):
    b"ready"                 the worker booted and serves
    b"listen <key>" + 1 fd   a new listener for this slot
    b"drop <key>"            the app closed that listener for good
    b"release <namespace>"   the app is done with every listener of that
                             namespace for good (a pod left the mesh): the
                             slot closes all its copies with that namespace key
"""

from __future__ import annotations

import json
import socket
from typing import Callable, Sequence

from shoal.core.sockets import (LISTEN_BACKLOG, CONNECT_TIMEOUT, NO_CPU, SocketFactory, listener_key,
                                set_incoming_cpu)

ENV_LISTEN_FDS = "SHOAL_LISTEN_FDS"          # {"<slot>": {"<key>": fd}}
ENV_UPGRADE_READY_FD = "SHOAL_UPGRADE_READY_FD"  # write b"1" once serving
MSG_MAX = 4096   # a listener key is far shorter; keys never approach this


def namespace_prefix(namespace_key: str) -> str:
    """The start of every `listener_key` of one namespace."""
    return listener_key(namespace_key, "", 0).partition("|")[0] + "|"


def send_message(ctrl: socket.socket, text: str, fds: Sequence[int] = ()) -> None:
    if fds:
        socket.send_fds(ctrl, [text.encode()], list(fds))
    else:
        ctrl.send(text.encode())


def recv_message(ctrl: socket.socket) -> tuple[str, list[int]] | None:
    """One message, or None on EOF (the worker is gone)."""
    data, fds, _flags, _addr = socket.recv_fds(ctrl, MSG_MAX, 4)
    if not data and not fds:
        return None
    return data.decode(errors="replace"), fds


class SlotSocketFactory:
    """A `SocketFactory` whose listeners belong to the worker's slot."""

    def __init__(self, inner: SocketFactory, inherited: dict[str, socket.socket],
                 notify: Callable[[str, list[int]], None], incoming_cpu: int = NO_CPU) -> None:
        self.inner = inner
        self.incoming_cpu = incoming_cpu
        self.namespace_key = inner.namespace_key
        self._inherited = inherited   # shared by every factory of this worker
        self._notify = notify
        self._keys: dict[int, str] = {}

    def listen(self, host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
        if port == 0:
            # Every process would get its own ephemeral port: no slot identity.
            return self.inner.listen(host, port, backlog=backlog)
        key = listener_key(self.namespace_key, host, port)
        sock = self._inherited.pop(key, None)
        if sock is None:
            sock = self.inner.listen(host, port, backlog=backlog)
            self._notify(f"listen {key}", [sock.fileno()])
        # Inherited ones too: the steering may have changed across a SIGUSR2.
        set_incoming_cpu(sock, self.incoming_cpu)
        sock.setblocking(False)
        self._keys[sock.fileno()] = key
        return sock

    def close_listener(self, sock: socket.socket) -> None:
        """Close a listener the app no longer wants (the slot forgets it too)."""
        key = self._keys.pop(sock.fileno(), None)
        sock.close()
        if key is not None:
            self._notify(f"drop {key}", [])

    def release_namespace(self) -> None:
        """Give up every listener of this factory's namespace for good.

        Call it after closing them with `close_listener` (a pod left the
        mesh): it also closes the ones inherited from the previous worker and
        not re-opened, and tells the supervisor to close its copies, so no
        process keeps the namespace's ports bound. The default namespace
        (node listeners) is never released this way.
        """
        if not self.namespace_key:
            return
        prefix = namespace_prefix(self.namespace_key)
        for key in [k for k in self._inherited if k.startswith(prefix)]:
            self._inherited.pop(key).close()
        for fd in [fd for fd, k in self._keys.items() if k.startswith(prefix)]:
            del self._keys[fd]
        self._notify(f"release {self.namespace_key}", [])

    def new_socket(self, family: int) -> socket.socket:
        return self.inner.new_socket(family)

    async def connect(self, host: str, port: int, *, source: tuple[str, int] | None = None,
                      timeout: float = CONNECT_TIMEOUT) -> socket.socket:
        return await self.inner.connect(host, port, source=source, timeout=timeout)


def encode_listen_fds(slots: dict[int, dict[str, socket.socket]]) -> str:
    return json.dumps({str(s): {k: sock.fileno() for k, sock in keys.items()}
                       for s, keys in slots.items()})


def decode_listen_fds(text: str) -> dict[int, dict[str, socket.socket]]:
    """Adopt inherited listener fds. Raises ValueError on a malformed value."""
    try:
        raw = json.loads(text)
        out: dict[int, dict[str, socket.socket]] = {}
        for slot, keys in raw.items():
            out[int(slot)] = {str(k): socket.socket(fileno=int(fd)) for k, fd in keys.items()}
    except (ValueError, TypeError, AttributeError, OSError) as e:
        raise ValueError(f"{ENV_LISTEN_FDS} is malformed ({e}); start without it") from e
    for keys in out.values():
        for sock in keys.values():
            sock.set_inheritable(False)
    return out
