"""The upstream exchange for HTTP/2 ports (the HTTP/1.1 one is in proxy.py).

Called by `Proxy._forward` once the route, backend and endpoints are known.
The request body streams up while the response streams down (gRPC
bidirectional streams need both at once); trailers pass both ways (gRPC's
status is in the response trailers). Works for HTTP/2 and HTTP/1.1 clients:
an HTTP/1.1 client gets the response chunked, trailers as chunked trailers.

No retries here: the body streams and is not kept (as in proxy.py for
bodies over RETRY_BUFFER_LIMIT); a request that failed before any response
byte gets Envoy's 502/503/504 answer.
"""

from __future__ import annotations

import asyncio

from shoal.core.records import Timeouts
from shoal.waypoint import filters, message
from shoal.waypoint.h2upstream import request_headers
from shoal.waypoint.upstream import UpstreamError, UpstreamTimeout

# Response headers that describe HTTP/1.1 framing, meaningless from HTTP/2.
_DROP_RESPONSE = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade"})


async def forward(proxy, st, req, body, sink, out, eps, rule, response_mod) -> bool:
    """Send one request to an HTTP/2 port and stream the answer to `sink`.
    Returns False when the client connection must close."""
    from shoal.waypoint.proxy import _budget, _with_deadline, _with_timeout
    timeouts = rule.timeouts if rule is not None else Timeouts()
    deadline = st.t0 + timeouts.request if timeouts.request else None
    headers = proxy._upstream_headers(st, req, out)
    if (message.get(headers, "expect") or "").lower() == "100-continue":
        headers = message.remove(headers, "expect")
        await sink.informational(100, [])
    has_body = bool(req.chunked or (req.content_length or 0) > 0)
    lb = proxy.balancer(st.backend.key if st.backend is not None else st.target.address)
    keys = [e.key for e in eps]
    by_key = {e.key: e for e in eps}
    key = lb.pick(keys, exclude=frozenset())
    ep = by_key[key]
    st.upstream, st.upstream_workload = key, ep.workload
    lb.started(key)
    budget = _budget(timeouts.backend_request, deadline, proxy.clock())
    stream = pump = None
    try:
        stream = await _with_timeout(proxy.h2pool.open_stream(
            ep, request_headers(out, headers), end_stream=not has_body,
            source_ip=st.down.source_ip, host=st.target.name), budget)
        if has_body:
            pump = asyncio.ensure_future(_pump(st, body, stream))
        status, rheaders = await _with_timeout(_head(stream, pump), budget)
    except UpstreamError as e:
        lb.finished(key, False, keys)
        _cancel(stream, pump)
        return await proxy._local(st, sink, e.status, e.body.encode(), e.flags)
    except BaseException:
        _cancel(stream, pump)
        raise
    lb.finished(key, status < 500, keys)
    st.status = status
    rheaders = [(k, v) for k, v in rheaders if k.lower() not in _DROP_RESPONSE]
    if response_mod is not None:
        rheaders = filters.modify_headers(rheaders, response_mod)
    clen = message.get(rheaders, "content-length")
    no_body = out.method == "HEAD" or status in (204, 304)
    await sink.start(status, rheaders, content_length=int(clen) if clen and clen.isdigit()
                     else None, no_body=no_body)
    try:
        while True:
            data = await _with_deadline(stream.read(), deadline, proxy.clock)
            if not data:
                break
            st.response_bytes += len(data)
            if not no_body:
                await sink.send(data)
        if stream.trailers and hasattr(sink, "trailers"):
            await sink.trailers(stream.trailers)
        if pump is not None and not pump.done():
            if stream.ended:
                await pump    # only its last flush is left
            else:
                # The server answered in full before the request body ended
                # (an early error, say): stop sending it, keep the answer.
                pump.cancel()
                stream.reset()
    except UpstreamError as e:
        st.flags = "UT" if isinstance(e, UpstreamTimeout) else "UR"
        _cancel(stream, pump)
        sink.abort()
        return False
    except BaseException:
        _cancel(stream, pump)
        raise
    stream.release()
    await sink.finish()
    return True


async def _head(stream, pump):
    """The response head; a request body that fails first fails the request."""
    if pump is None:
        return await stream.response()
    head = asyncio.ensure_future(stream.response())
    try:
        done, _ = await asyncio.wait({head, pump}, return_when=asyncio.FIRST_COMPLETED)
        if head not in done and pump.exception() is not None:
            raise pump.exception()
        return await head
    finally:
        if not head.done():
            head.cancel()


async def _pump(st, body, stream) -> None:
    total = 0
    while True:
        data = await body.read()
        if not data:
            break
        total += len(data)
        st.request_bytes = total
        await stream.send(data)
    await stream.end(getattr(body, "trailers", None))


def _cancel(stream, pump) -> None:
    if pump is not None and not pump.done():
        pump.cancel()
    if stream is not None:
        stream.reset()
