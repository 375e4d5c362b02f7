"""Connection manager: live inbound connections and their policy re-check.

Like ztunnel's `proxy/connection_manager.rs`: every authorized inbound
connection is tracked with its authorization inputs (`ConnInfo`). When the
routing generation changes (policies may have changed), each one is
authorized again; those now denied are closed with the reason
`AuthorizationPolicyLateRejection` and the deciding policy. No I/O here:
closing goes through the callback the adapter registered.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

from shoal.routing.view import View
from shoal.ztunnel.inbound import Authorizer, ConnInfo, Rejected, authorize_l4, recheck

LATE_REJECTION = "AuthorizationPolicyLateRejection"


@dataclass(slots=True)
class Tracked:
    workload_ip: str
    conn: ConnInfo
    close: Callable[[str], None]


class ConnectionManager:
    """Tracks live inbound connections of one worker (or one pod in in-pod mode)."""

    def __init__(self, authorize: Authorizer = authorize_l4) -> None:
        self._authorize = authorize
        self._live: dict[int, Tracked] = {}
        self._ids = itertools.count(1)
        self._generation = -1

    def __len__(self) -> int:
        return len(self._live)

    def register(self, workload_ip: str, conn: ConnInfo, close: Callable[[str], None]) -> int:
        """Track a connection; `close(reason)` must end it. Returns a token."""
        token = next(self._ids)
        self._live[token] = Tracked(workload_ip, conn, close)
        return token

    def release(self, token: int) -> None:
        self._live.pop(token, None)

    def observe(self, view: View) -> list[tuple[ConnInfo, Rejected]]:
        """Re-check every connection if the generation moved since last call."""
        gen = view.generation
        if gen == self._generation:
            return []
        first = self._generation == -1
        self._generation = gen
        return [] if first else self.recheck(view)

    def recheck(self, view: View) -> list[tuple[ConnInfo, Rejected]]:
        """Authorize every live connection again; close and return the denied."""
        closed = []
        for token, t in list(self._live.items()):
            rejected = recheck(view, t.workload_ip, t.conn, self._authorize)
            if rejected is None:
                continue
            self._live.pop(token, None)
            reason = f"{LATE_REJECTION}: {rejected.reason}"
            t.close(reason)
            closed.append((t.conn, rejected))
        return closed

    def snapshot(self) -> list[dict[str, Any]]:
        """For /config_dump: the live connections and their inputs."""
        return [{"dst": f"{t.conn.dst_ip}:{t.conn.dst_port}",
                 "src": f"{t.conn.src_ip}:{t.conn.src_port}",
                 "src_identity": t.conn.src_identity} for t in self._live.values()]
