"""waypoint.proxy.Proxy.handle over a static view and a fake upstream: the
decisions before the upstream (policy, route, endpoints) and the one
telemetry record every request ends in."""

from __future__ import annotations

import random

from shoal.core.records import Authorization, Rule, Service, ServicePort, TargetRef, Workload
from shoal.routing.view import StaticView
from shoal.waypoint.destination import Target
from shoal.waypoint.downstream import Downstream
from shoal.waypoint.proxy import Proxy
from shoal.waypoint.upstream import H1Pool
from tests.unit.waypoint.fakes import FakeBody, FakeResponse, FakeSink, FakeUpstream, \
    request

KEY = "default/echo.default.svc.cluster.local"
POD = Workload(uid="c//Pod/default/echo-1", name="echo-1", namespace="default",
               ips=("10.0.0.1",), services={KEY: {80: 8080}})
ECHO = Service(name="echo", namespace="default", hostname="echo.default.svc.cluster.local",
               vips=("10.96.0.1",), ports=(ServicePort(port=80, target_port=8080),),
               endpoints=(POD.uid,))
EMPTY = Service(name="empty", namespace="default", hostname="empty.default.svc.cluster.local",
                vips=("10.96.0.2",), ports=(ServicePort(port=80),))
DENY_ECHO = Authorization(name="deny-echo", namespace="default", scope="TARGET_REF",
                          action="DENY", target_refs=(TargetRef(kind="Service", name="echo"),),
                          rules=(Rule(),))


class Records:
    def __init__(self) -> None:
        self.records = []

    def record(self, rec) -> None:
        self.records.append(rec)

    def flush(self) -> None:
        pass


def make(policies=(), upstream=None):
    view = StaticView(workloads=[POD], services=[ECHO, EMPTY], policies=list(policies))
    tel = Records()
    proxy = Proxy(view=view, pool=H1Pool(connector=None), telemetry=tel, rng=random.Random(3))
    if upstream is not None:
        proxy.forwarder.h1 = upstream
    return proxy, tel


def down(svc):
    return Downstream(source_ip="10.0.9.9", target=Target(address=svc.vips[0], port=80,
                                                          service=svc))


async def test_a_request_goes_to_the_service_endpoint_and_is_recorded_once():
    up = FakeUpstream(FakeResponse(200, [b"hi"]))
    proxy, tel = make(upstream=up)
    sink = FakeSink()
    assert await proxy.handle(down(ECHO), request("GET"), FakeBody(), sink)
    assert up.calls[0][0].key == "10.0.0.1:8080" and sink.body == b"hi"
    [rec] = tel.records
    assert (rec.status, rec.flags, rec.upstream) == (200, "-", "10.0.0.1:8080")
    assert rec.response_bytes == 2
    assert rec.destination == ECHO and rec.destination_workload == POD


async def test_a_denying_policy_answers_403_and_names_itself():
    up = FakeUpstream()
    proxy, tel = make([DENY_ECHO], upstream=up)
    sink = FakeSink()
    await proxy.handle(down(ECHO), request("GET"), FakeBody(), sink)
    assert sink.events == [("local", 403, b"RBAC: access denied")] and not up.calls
    assert (tel.records[0].flags, tel.records[0].policy) == ("RBAC", "default/deny-echo")


async def test_no_endpoint_is_503_no_healthy_upstream():
    proxy, tel = make()
    sink = FakeSink()
    await proxy.handle(down(EMPTY), request("GET"), FakeBody(), sink)
    assert sink.events == [("local", 503, b"no healthy upstream")]
    assert tel.records[0].flags == "UH"


async def test_plaintext_mode_without_a_known_host_is_404():
    proxy, tel = make()
    sink = FakeSink()
    req = request("GET")
    req.head.headers[:] = [("host", "nowhere.example")]
    await proxy.handle(Downstream(source_ip="10.0.9.9"), req, FakeBody(), sink)
    assert sink.events == [("local", 404, b"no route")] and tel.records[0].flags == "NR"


async def test_a_bug_costs_one_request_a_500_not_the_worker():
    class Broken(FakeUpstream):
        async def exchange(self, ep, req, informational):
            raise KeyError("bug")
    proxy, tel = make(upstream=Broken())
    sink = FakeSink()
    assert await proxy.handle(down(ECHO), request("GET"), FakeBody(), sink)
    assert sink.events == [("local", 500, b"internal error")] and tel.records[0].status == 500


async def test_a_client_gone_is_recorded_as_dc():
    proxy, tel = make(upstream=FakeUpstream(FakeResponse(200, [b"x"])))
    sink = FakeSink()

    async def send(data):
        raise ConnectionResetError("gone")
    sink.send = send
    try:
        await proxy.handle(down(ECHO), request("GET"), FakeBody(), sink)
    except ConnectionResetError:
        pass
    assert tel.records[0].flags == "DC"


def _state(proxy, svc):
    from shoal.waypoint.request import RequestState
    req = request("GET")
    return req, RequestState(down=down(svc), head=req.head, t0=0.0)


def test_decide_gives_a_plan_or_the_local_answer_without_io():
    from shoal.waypoint.proxy import LocalAnswer, Plan
    proxy, tel = make()
    req, st = _state(proxy, ECHO)
    plan = proxy.decide(st, req)
    assert type(plan) is Plan and [e.key for e in plan.eps] == ["10.0.0.1:8080"]
    assert plan.out is req.head and plan.rule is None and plan.mirrors == ()
    assert st.backend == ECHO and st.backend_port == 80
    req, st = _state(proxy, EMPTY)
    assert proxy.decide(st, req) == LocalAnswer(503, b"no healthy upstream", "UH")
    denied, _ = make([DENY_ECHO])
    req, st = _state(denied, ECHO)
    assert denied.decide(st, req) == LocalAnswer(403, b"RBAC: access denied", "RBAC")
    assert st.policy == "default/deny-echo"
    assert tel.records == []          # deciding records nothing: handle() does, once


def test_fast_headers_only_for_what_the_fast_path_serves_like_the_coroutine_path():
    from shoal.core.records import Retry, RouteRule
    from shoal.waypoint.upstream import TcpConnector
    view = StaticView(workloads=[POD], services=[ECHO], policies=[])
    proxy = Proxy(view=view, pool=H1Pool(connector=TcpConnector()), telemetry=Records(),
                  rng=random.Random(3))
    fwd = proxy.forwarder

    def headers(req, rule=None, mirrors=()):
        st = _state(proxy, ECHO)[1]
        plan = proxy.decide(st, req)
        return fwd.fast_headers(st, req, plan.out, plan.eps, rule, mirrors)
    got = headers(request("GET", headers=[("content-length", "0"), ("connection", "x-hop"),
                                          ("x-hop", "1")]))
    names = [k for k, _ in got]
    assert names == ["host", "traceparent", "x-request-id", "x-forwarded-proto"]
    assert headers(request("POST", body_len=3)) is None
    assert headers(request("POST", chunked=True)) is None
    assert headers(request("GET", headers=[("expect", "100-continue")])) is None
    assert headers(request("GET"), mirrors=("m",)) is None
    assert headers(request("GET"), rule=RouteRule(retry=Retry())) is None
