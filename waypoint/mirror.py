"""RequestMirror: send a copy of a request to another backend, fire and forget.

Envoy semantics: the copy goes to the mirror backend with "-shadow" appended
to the authority; its response is read (so the upstream connection can be
reused) and dropped; a failure or a slow mirror never affects the client.
Only requests whose body was buffered (see forward.RETRY_BUFFER_LIMIT) are
mirrored. The copy goes through the same `Upstream` as any request to the
mirror backend's port (HTTP/1.1 or HTTP/2).
"""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.waypoint import message
from shoal.waypoint.exchange import RequestBody, UpstreamRequest, UpstreamResponse
from shoal.waypoint.request import RequestState

# A mirror exchange slower than this is abandoned (and its connection closed).
MIRROR_TIMEOUT = 30.0


async def send_mirror(fwd: Any, st: RequestState, m: Any, req: UpstreamRequest) -> None:
    """Mirror one request (`m` is a core.records.RequestMirror) through
    `fwd` (a forward.Forwarder: its lookups and upstreams)."""
    ref = m.backend
    ns = ref.namespace or (st.target.service.namespace if st.target.service else "default")
    svc = fwd.lookups.view.service_by_host(ns, ref.name)
    if svc is None:
        return
    port = ref.port or st.target.port
    eps = fwd.lookups.endpoints(svc, port)
    if not eps:
        return
    key = fwd.lookups.balancer(svc.key).pick([e.key for e in eps])
    ep = next(e for e in eps if e.key == key)
    host = message.get(req.headers, "host") or st.authority
    copy = UpstreamRequest(head=req.head, headers=message.set_(req.headers, "host", f"{host}-shadow"),
                           body=RequestBody(buffered=req.body.buffered, source=req.body.source,
                                            framing=req.body.framing),
                           source_ip=req.source_ip, host=svc.hostname)
    resp: UpstreamResponse | None = None
    try:
        async with asyncio.timeout(MIRROR_TIMEOUT):
            resp = await fwd.upstream_for(svc, port).exchange(ep, copy, _ignore)
            while await resp.read():
                pass
        await resp.finish()
    except BaseException as e:   # a mirror failure is never the client's problem
        if resp is not None:
            resp.abort()
        if not isinstance(e, Exception):
            raise


async def _ignore(status: int, headers: message.Headers) -> None:
    return None
