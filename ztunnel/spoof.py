"""In-pod source spoofing toward the app: when, and whether it works.

Istio's ztunnel connects to the app from the original client's address
(IP_TRANSPARENT), so the app sees its real peer. That needs the pod's policy
routing (replies marked 0x111 go to the local table) and CAP_NET_ADMIN; a
`SpoofState` per pod checks the routing once per address family (lazily: the
node agent installs the rules after ztunnel acked the pod), and after any
failure falls back to plain connects for good, saying so once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any, Callable, Coroutine


def spoofable(client_ip: str, host: str) -> int | None:
    """The address family to spoof `client_ip` toward `host` in, or None when
    it must not be: no client, the pod itself, loopback/unspecified, or a
    family other than the app's."""
    if not client_ip or client_ip == host:
        return None
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    if addr.is_loopback or addr.is_unspecified or (addr.version == 6) != (":" in host):
        return None
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


# `check(family)`: a coroutine (it runs as a task that concurrent connections share).
RouteCheck = Callable[[int], Coroutine[Any, Any, str]]


class SpoofState:
    """Whether one pod's inbound connections may spoof (see module docstring).

    `check(family)` -> "" when replies to a spoofed source come back, else why
    not (e.g. `PodSocketFactory.spoof_routing`); None: never spoof.
    """

    def __init__(self, check: RouteCheck | None, *,
                 log: logging.Logger, pod: str) -> None:
        self._check = check
        self._log = log
        self._pod = pod
        self._ok: dict[int, bool] = {}
        self._pending: dict[int, asyncio.Task] = {}
        self._logged = False

    async def source(self, host: str, client_ip: str) -> tuple[str, int] | None:
        """The address to bind for a connect to `host`, or None (no spoofing)."""
        if self._check is None:
            return None
        family = spoofable(client_ip, host)
        if family is None:
            return None
        ok = self._ok.get(family)
        if ok is None:
            ok = await self._first_check(self._check, family)
        return (client_ip, 0) if ok else None

    async def _first_check(self, check: RouteCheck, family: int) -> bool:
        """Once per family (concurrent connections share the check)."""
        pending = self._pending.get(family)
        if pending is None:
            pending = self._pending[family] = asyncio.get_running_loop().create_task(check(family))
        try:
            reason = await asyncio.shield(pending)
        except Exception as e:   # noqa: BLE001 - a failed check means no spoofing
            reason = f"routing check failed: {e}"
        if family not in self._ok:
            self._ok[family] = not reason
            if reason:
                self.failed(reason)
        return self._ok[family]

    def failed(self, reason: str) -> None:
        """Spoofing did not work: plain connects from now on (logged once)."""
        self._ok = {socket.AF_INET: False, socket.AF_INET6: False}
        if not self._logged:
            self._logged = True
            self._log.warning("the app will see this proxy's address, not the client's: "
                              "source spoofing unavailable", extra={"fields": {
                                  "pod": self._pod, "reason": reason}})
