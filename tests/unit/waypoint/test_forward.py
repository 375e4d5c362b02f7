"""The upstream half of the waypoint pipeline over fake upstreams (forward.py,
mirror.py): retries, deadlines, body buffering, streaming, trailers, mirrors,
the same for every `Upstream` implementation."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

from shoal.core.records import RequestMirror, BackendRef, Retry, Service, ServicePort, Timeouts
from shoal.routing.view import StaticView
from shoal.waypoint.destination import Endpoint, Target
from shoal.waypoint.downstream import Downstream
from shoal.waypoint.forward import RETRY_BUFFER_LIMIT, Forwarder
from shoal.waypoint.lookups import Lookups
from shoal.waypoint.request import RequestState
from shoal.waypoint.upstream import ConnectFailed, UpstreamProtocolError, UpstreamReset
from tests.unit.waypoint.fakes import FakeBody, FakeResponse, FakeSink, FakeUpstream, request

EPS = [Endpoint(ip="10.0.1.1", port=8080), Endpoint(ip="10.0.1.2", port=8080),
       Endpoint(ip="10.0.1.3", port=8080)]


def rig(h1=None, h2=None, view=None):
    lookups = Lookups(view or StaticView(), rng=random.Random(1))
    fwd = Forwarder(lookups, h1=h1 or FakeUpstream(), h2=h2 or FakeUpstream(),
                    rng=random.Random(2), clock=asyncio.get_running_loop().time)
    st = RequestState(down=Downstream(source_ip="10.0.0.1"), head=request().head,
                      t0=fwd.clock())
    st.target = Target(address="10.96.0.10", port=80)
    return fwd, st


def rule(*, retry=None, timeouts=Timeouts()):
    return SimpleNamespace(retry=retry, timeouts=timeouts)


async def forward(fwd, st, req, body, sink, r=None, mirrors=()):
    return await fwd.forward(st, req, body, sink, req.head, EPS, r, None, mirrors)


async def test_a_503_is_retried_on_another_endpoint_and_the_client_sees_the_retry():
    first, second = FakeResponse(503, [b"busy"]), FakeResponse(200, [b"hello"])
    up = FakeUpstream(first, second)
    fwd, st = rig(h1=up)
    sink = FakeSink()
    keep = await forward(fwd, st, request(body_len=3), FakeBody(b"abc"), sink,
                         rule(retry=Retry(attempts=2, codes=(503,), backoff=0)))
    assert keep and sink.body == b"hello" and ("finish",) in sink.events
    assert first.aborted and second.finished
    assert up.calls[0][0] != up.calls[1][0]                 # another endpoint
    assert all(req.body.buffered == b"abc" for _, req in up.calls)
    assert st.status == 200 and st.request_bytes == 3 and st.response_bytes == 5


async def test_connect_failures_are_retried_until_the_attempts_run_out():
    up = FakeUpstream(ConnectFailed("a"), ConnectFailed("b"), ConnectFailed("c"))
    fwd, st = rig(h1=up)
    sink = FakeSink()
    await forward(fwd, st, request(), FakeBody(), sink,
                  rule(retry=Retry(attempts=2, codes=(503,), backoff=0)))
    assert len(up.calls) == 3
    assert sink.events == [("local", 503, ConnectFailed().body.encode())]
    assert st.flags == "UF"


async def test_a_protocol_error_is_not_retried():
    up = FakeUpstream(UpstreamProtocolError("garbage"), FakeResponse())
    fwd, st = rig(h1=up)
    sink = FakeSink()
    await forward(fwd, st, request(), FakeBody(), sink, rule(retry=Retry(backoff=0)))
    assert len(up.calls) == 1 and sink.events[0][:2] == ("local", 502) and st.flags == "UPE"


async def test_a_streamed_body_is_never_retried():
    up = FakeUpstream(FakeResponse(503, [b"busy"]), FakeResponse(200))
    fwd, st = rig(h1=up)
    sink = FakeSink()
    body = FakeBody(b"x" * 10, b"y" * 5)
    await forward(fwd, st, request(chunked=True), body, sink, rule(retry=Retry(backoff=0)))
    assert len(up.calls) == 1 and sink.body == b"busy" and st.status == 503
    req = up.calls[0][1]
    assert req.body.buffered is None and req.body.framing == "chunked"
    assert ("transfer-encoding", "chunked") in req.headers


async def test_large_sized_bodies_stream_and_small_ones_are_buffered():
    up = FakeUpstream(FakeResponse(), FakeResponse())
    fwd, st = rig(h1=up)
    await forward(fwd, st, request(body_len=RETRY_BUFFER_LIMIT + 1), FakeBody(b"z"), FakeSink())
    await forward(fwd, st, request(body_len=2), FakeBody(b"h", b"i"), FakeSink())
    assert up.calls[0][1].body.buffered is None and up.calls[0][1].body.framing == "length"
    assert up.calls[1][1].body.buffered == b"hi"
    assert ("content-length", "2") in up.calls[1][1].headers


async def test_per_try_timeout_answers_504_upstream_timeout():
    up = FakeUpstream("hang")
    fwd, st = rig(h1=up)
    sink = FakeSink()
    await forward(fwd, st, request(), FakeBody(), sink,
                  rule(timeouts=Timeouts(backend_request=0.05)))
    assert sink.events == [("local", 504, b"upstream request timeout")] and st.flags == "UT"


async def test_a_retry_that_would_end_past_the_deadline_keeps_the_answer():
    busy = FakeResponse(503, [b"busy"])
    up = FakeUpstream(busy, FakeResponse(200))
    fwd, st = rig(h1=up)
    sink = FakeSink()
    await forward(fwd, st, request(), FakeBody(), sink,
                  rule(retry=Retry(backoff=5.0), timeouts=Timeouts(request=1.0)))
    assert len(up.calls) == 1 and sink.body == b"busy" and st.status == 503
    assert busy.finished and not busy.aborted        # its connection was not thrown away


async def test_a_reset_mid_body_cuts_the_client_off():
    resp = FakeResponse(200, [b"part"], fail_after=UpstreamReset("gone"))
    fwd, st = rig(h1=FakeUpstream(resp))
    sink = FakeSink()
    keep = await forward(fwd, st, request(), FakeBody(), sink)
    assert keep is False and st.flags == "UR" and resp.aborted and not resp.finished
    assert sink.events[-1] == ("abort",) and sink.body == b"part"


async def test_a_client_gone_mid_body_aborts_the_upstream_and_propagates():
    resp = FakeResponse(200, [b"a", b"b"])
    fwd, st = rig(h1=FakeUpstream(resp))
    sink = FakeSink()

    async def send(data):
        raise ConnectionResetError("client left")
    sink.send = send
    try:
        await forward(fwd, st, request(), FakeBody(), sink)
    except ConnectionResetError:
        pass
    else:
        raise AssertionError("the client's failure must reach Proxy.handle (flag DC)")
    assert resp.aborted and not resp.finished


async def test_a_client_gone_before_the_answer_leaves_the_endpoint_idle():
    class ClientGone(FakeUpstream):
        async def exchange(self, ep, req, informational):
            self.calls.append((ep, req))
            raise ConnectionResetError("client reset while its body was read")
    fwd, st = rig(h1=ClientGone())
    try:
        await forward(fwd, st, request(chunked=True), FakeBody(b"x"), FakeSink())
    except ConnectionResetError:
        pass
    lb = fwd.lookups.balancer(st.target.address)
    assert all(lb._host(e.key).active == 0 for e in EPS)


async def test_trailers_reach_the_client_and_head_responses_send_no_body():
    resp = FakeResponse(200, [b"data"], trailers=[("grpc-status", "0")])
    fwd, st = rig(h1=FakeUpstream(resp))
    sink = FakeSink()
    await forward(fwd, st, request("HEAD"), FakeBody(), sink)
    assert ("start", 200, True) in sink.events and sink.body == b""
    assert ("trailers", [("grpc-status", "0")]) in sink.events


async def test_expect_100_continue_is_answered_here_and_not_passed_on():
    up = FakeUpstream(FakeResponse())
    fwd, st = rig(h1=up)
    sink = FakeSink()
    await forward(fwd, st, request(body_len=1, headers=[("expect", "100-continue")]),
                  FakeBody(b"!"), sink)
    assert sink.events[0] == ("informational", 100)
    assert not any(k.lower() == "expect" for k, _ in up.calls[0][1].headers)


async def test_trace_and_request_ids_are_set_once():
    up = FakeUpstream(FakeResponse())
    fwd, st = rig(h1=up)
    await forward(fwd, st, request(), FakeBody(), FakeSink())
    headers = dict(up.calls[0][1].headers)
    assert headers["traceparent"] == st.traceparent and headers["x-request-id"] == st.request_id
    assert headers["x-forwarded-proto"] == "http"


async def test_http2_ports_use_the_h2_upstream():
    grpc = Service(name="g", namespace="default", hostname="g.default.svc.cluster.local",
                   vips=("10.96.0.20",), ports=(ServicePort(port=80, target_port=8080,
                                                            app_protocol="grpc"),))
    h1, h2 = FakeUpstream(), FakeUpstream(FakeResponse())
    fwd, st = rig(h1=h1, h2=h2)
    st.backend, st.backend_port = grpc, 80
    await forward(fwd, st, request(), FakeBody(), FakeSink())
    assert len(h2.calls) == 1 and not h1.calls
    assert fwd.upstream_for(None, 80) is h1


async def test_a_mirror_gets_a_shadow_copy_and_its_failure_is_not_the_clients():
    shadow_svc = Service(name="shadow", namespace="default",
                         hostname="shadow.default.svc.cluster.local", vips=("10.96.0.30",),
                         ports=(ServicePort(port=80, target_port=8080),))
    lookups_view = StaticView(services=(shadow_svc,))
    up = FakeUpstream(FakeResponse(200, [b"primary"]), UpstreamReset("mirror down"))
    fwd, st = rig(h1=up, view=lookups_view)
    fwd.lookups.endpoints = lambda svc, port: [Endpoint(ip="10.0.9.9", port=8080)]
    sink = FakeSink()
    mirror = RequestMirror(backend=BackendRef(name="shadow", namespace="", port=80))
    await forward(fwd, st, request(body_len=2), FakeBody(b"hi"), sink, mirrors=(mirror,))
    await asyncio.gather(*fwd._mirrors)
    assert sink.body == b"primary"
    ep, copy = up.calls[1]
    assert ep.ip == "10.0.9.9" and dict(copy.headers)["host"] == "echo-shadow"
    assert copy.body.buffered == b"hi" and copy.host == shadow_svc.hostname
