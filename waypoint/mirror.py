"""RequestMirror: send a copy of a request to another backend, fire and forget.

Envoy semantics: the copy goes to the mirror backend with "-shadow" appended
to the authority; its response is read (so the upstream connection can be
reused) and dropped; a failure or a slow mirror never affects the client.
Only requests whose body was buffered (see proxy.RETRY_BUFFER_LIMIT) are
mirrored.
"""

from __future__ import annotations

import asyncio

from shoal.waypoint import message
from shoal.waypoint.http1 import (H1ResponseParser, MessageEnded, ResponseReceived,
                            serialize_request_head)
from shoal.waypoint.message import RequestHead

# A mirror response slower than this is abandoned (and its connection closed).
MIRROR_TIMEOUT = 30.0
# One read from the mirror backend.
MIRROR_READ = 64 * 1024


async def send_mirror(proxy, st, m, out: RequestHead, headers, body: bytes) -> None:
    """Mirror one request (`m` is a routing.records.RequestMirror)."""
    ref = m.backend
    ns = ref.namespace or (st.target.service.namespace if st.target.service else "default")
    svc = proxy.view.service_by_host(ns, ref.name)
    if svc is None:
        return
    eps = proxy.endpoints(svc, ref.port or st.target.port)
    if not eps:
        return
    key = proxy.balancer(svc.key).pick([e.key for e in eps])
    ep = next(e for e in eps if e.key == key)
    host = message.get(headers, "host") or st.authority
    hdrs = message.set_(headers, "host", f"{host}-shadow")
    conn = None
    try:
        conn = await proxy.pool.acquire(ep, source_ip=st.down.source_ip, host=svc.hostname)
        await conn.stream.write(serialize_request_head(out, hdrs) + body)
        parser = H1ResponseParser(out.method)
        done = keep = False
        async with asyncio.timeout(MIRROR_TIMEOUT):
            while not done:
                data = await conn.stream.read(MIRROR_READ)
                for e in parser.receive_data(data):
                    if isinstance(e, ResponseReceived):
                        keep = e.keep_alive
                    done = done or isinstance(e, MessageEnded)
                if not data:
                    break
        proxy.pool.release(conn, keep and done)
    except Exception:   # a mirror failure is never the client's problem
        if conn is not None:
            proxy.pool.discard(conn)
