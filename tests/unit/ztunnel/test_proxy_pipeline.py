"""The ztunnel's connection pipelines over fake I/O (proxy/outbound.py,
passthrough.py, inbound.py): what each outcome does to the client, the
upstream and the connection's telemetry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from shoal.core.hbone import HboneError
from shoal.core.hbone.server import Accept, ConnectRequest, Reject
from shoal.core.records import Authorization, Rule
from shoal.ztunnel.proxy.inbound import Inbound, client_addr
from shoal.ztunnel.proxy.outbound import Outbound
from shoal.ztunnel.proxy.passthrough import InboundPassthrough
from tests.unit.ztunnel.conftest import CLIENT, ECHO, EMPTY, LEGACY, SERVER_A, make_view
from tests.unit.ztunnel.fakes import FakeCerts, FakeEnd, FakeInputs, FakePool

ECHO_DST = (ECHO.vips[0], 80)


# -- outbound (15001) ------------------------------------------------------------
async def test_no_route_resets_the_client_and_counts_open_and_close_flagged():
    pi = FakeInputs(make_view())
    down = FakeEnd([b"hello"], peer=(CLIENT.ips[0], 40000))
    await Outbound(pi).handle(down, (EMPTY.vips[0], 80), started=100.0)
    assert down.aborted
    m = pi.metrics.counts
    flag = "NO_HEALTHY_UPSTREAM"
    assert m[("opened", "source", flag)] == 1 and m[("closed", "source", flag)] == 1
    assert ("opened", "source", "-") not in m and pi.tracker.open_count() == 0


async def test_unknown_source_cannot_open_hbone():
    pool = FakePool(stream=FakeEnd())
    pi = FakeInputs(make_view(), pool=pool)
    down = FakeEnd(peer=("10.9.9.9", 40000))        # not a workload of this node
    await Outbound(pi).handle(down, ECHO_DST, started=100.0)
    assert down.aborted and pool.opened is None
    m = pi.metrics.counts
    assert m[("opened", "source", "-")] == 1
    assert m[("closed", "source", "IDENTITY_ERROR")] == 1


async def test_a_401_from_the_peer_is_a_deny_and_other_failures_a_connect():
    for status, flag in ((401, "DENY"), (503, "CONNECT"), (0, "CONNECT")):
        pi = FakeInputs(make_view(), pool=FakePool(error=HboneError("no", status=status)))
        down = FakeEnd(peer=(CLIENT.ips[0], 40000))
        await Outbound(pi).handle(down, ECHO_DST, started=100.0)
        assert down.aborted
        assert pi.metrics.counts[("closed", "source", flag)] == 1


async def test_certificate_unavailable_is_an_identity_error():
    pi = FakeInputs(make_view(), pool=FakePool(stream=FakeEnd()),
                    certs=FakeCerts(fail=RuntimeError("CA down")))
    down = FakeEnd(peer=(CLIENT.ips[0], 40000))
    await Outbound(pi).handle(down, ECHO_DST, started=100.0)
    assert pi.metrics.counts[("closed", "source", "IDENTITY_ERROR")] == 1


async def test_hbone_relay_moves_both_ways_and_counts_bytes_once():
    up = FakeEnd([b"pong!"])
    pool = FakePool(stream=up)
    pi = FakeInputs(make_view(), pool=pool)
    down = FakeEnd([b"ping"], peer=(CLIENT.ips[0], 40000))
    await Outbound(pi).handle(down, ECHO_DST, started=100.0)
    assert up.got == [b"ping"] and down.got == [b"pong!"]
    assert up.eof and down.eof and not down.aborted
    assert pool.opened["src"] == CLIENT.identity
    assert pool.opened["forwarded_for"] == (CLIENT.ips[0], 40000)
    assert pool.opened["host"] == ECHO.hostname
    m = pi.metrics.counts
    assert m[("opened", "source", "-")] == 1 and m[("closed", "source", "-")] == 1
    assert (pi.metrics.total("received"), pi.metrics.total("sent")) == (4, 5)


async def test_plaintext_destination_is_piped_over_tcp():
    app = FakeEnd([b"legacy says hi"])
    pi = FakeInputs(make_view(), app=app)
    down = FakeEnd([b"hi"], peer=(CLIENT.ips[0], 40000))
    await Outbound(pi).handle(down, (LEGACY.ips[0], 8080), started=100.0)
    assert pi.connected == [(LEGACY.ips[0], 8080)] and app.got == [b"hi"]
    assert (pi.metrics.total("received"), pi.metrics.total("sent")) == (2, 14)


async def test_plaintext_connect_failure_resets_with_connect_flag():
    pi = FakeInputs(make_view(), app_error=ConnectionRefusedError("refused"))
    down = FakeEnd(peer=(CLIENT.ips[0], 40000))
    await Outbound(pi).handle(down, (LEGACY.ips[0], 8080), started=100.0)
    assert down.aborted and pi.metrics.counts[("closed", "source", "CONNECT")] == 1


# -- plaintext inbound (15006) -----------------------------------------------------
async def test_passthrough_denied_resets_and_flags_deny():
    view = make_view([Authorization(name="deny-all", namespace="default", scope="NAMESPACE",
                                    action="DENY", rules=(Rule(),))])
    pi = FakeInputs(view, app=FakeEnd())
    down = FakeEnd(peer=("10.0.0.1", 40000))
    await InboundPassthrough(pi).handle(down, (SERVER_A.ips[0], 8080), started=100.0)
    assert down.aborted and pi.connected == []
    m = pi.metrics.counts
    assert m[("opened", "destination", "-")] == 1 and m[("closed", "destination", "DENY")] == 1


async def test_passthrough_registers_the_connection_only_while_it_lives():
    seen = []
    app = FakeEnd([b"ok"])
    pi = FakeInputs(make_view(), app=app)
    real_read = app.read

    async def read(n=65536):
        seen.append(len(pi.connections))
        return await real_read(n)
    app.read = read
    await InboundPassthrough(pi).handle(FakeEnd([b"x"]), (SERVER_A.ips[0], 8080), 100.0)
    assert seen and all(n == 1 for n in seen)
    assert len(pi.connections) == 0


async def test_passthrough_app_unreachable_is_connect():
    pi = FakeInputs(make_view(), app_error=OSError("unreachable"))
    down = FakeEnd()
    await InboundPassthrough(pi).handle(down, (SERVER_A.ips[0], 8080), started=100.0)
    assert down.aborted
    assert pi.metrics.counts[("closed", "destination", "CONNECT")] == 1


# -- HBONE inbound (15008) ---------------------------------------------------------
def connect_request(authority, *, peer=("10.0.0.1", 50000), identity=CLIENT.identity,
                    forwarded=None):
    host, _, port = authority.rpartition(":")
    headers = {"forwarded": f'for="{forwarded}"'} if forwarded else {}
    return ConnectRequest(authority=authority, host=host, port=int(port),
                          peer_identity=SimpleNamespace(uri=identity), peer_address=peer,
                          local_address=None, headers=headers)


async def test_hbone_reject_answers_the_status_and_closes_the_record():
    pi = FakeInputs(make_view())
    answer = await Inbound(pi).on_connect(connect_request("10.0.1.1:15008"), "10.0.1.1")
    assert isinstance(answer, Reject) and answer.status == 400      # self call
    m = pi.metrics.counts
    assert m[("opened", "destination", "-")] == 1
    assert m[("closed", "destination", "CONNECT")] == 1


async def test_hbone_app_unreachable_is_503_connect():
    pi = FakeInputs(make_view(), app_error=OSError("refused"))
    answer = await Inbound(pi).on_connect(connect_request("10.0.1.1:8080"), "10.0.1.1")
    assert isinstance(answer, Reject) and answer.status == 503
    assert pi.metrics.counts[("closed", "destination", "CONNECT")] == 1


async def test_hbone_accept_tracks_bytes_until_done():
    app = FakeEnd()
    pi = FakeInputs(make_view(), app=app)
    answer = await Inbound(pi).on_connect(connect_request("10.0.1.1:8080"), "10.0.1.1")
    assert isinstance(answer, Accept) and answer.upstream is app
    assert len(pi.connections) == 1 and pi.tracker.open_count() == 1
    answer.on_done(30, 12, "")
    assert len(pi.connections) == 0 and pi.tracker.open_count() == 0
    assert (pi.metrics.total("received"), pi.metrics.total("sent")) == (12, 30)
    assert pi.metrics.counts[("closed", "destination", "-")] == 1


async def test_hbone_tunnel_reset_is_counted_once_as_failed():
    """A tunnel that ended in a reset (the app or the client reset): closed
    once, failed once, its bytes once; a second report changes nothing."""
    pi = FakeInputs(make_view(), app=FakeEnd())
    answer = await Inbound(pi).on_connect(connect_request("10.0.1.1:8080"), "10.0.1.1")
    assert isinstance(answer, Accept)
    answer.on_done(30, 12, "connection reset: [Errno 104] Connection reset by peer")
    answer.on_done(30, 12, "connection reset: again")
    assert pi.metrics.counts[("closed", "destination", "-")] == 1
    assert pi.metrics.counts[("failed", "destination", "-")] == 1
    assert (pi.metrics.total("received"), pi.metrics.total("sent")) == (12, 30)
    assert pi.tracker.open_count() == 0


def test_forwarded_for_is_believed_only_for_the_peer_identity():
    view = make_view()
    vouched = connect_request("10.0.1.1:8080", forwarded="10.0.0.1:41000")
    assert client_addr(view, vouched, CLIENT.identity) == ("10.0.0.1", 41000)
    assert client_addr(view, vouched, "spiffe://cluster.local/ns/x/sa/y") == ("10.0.0.1", 50000)
    unknown = connect_request("10.0.1.1:8080", forwarded="10.7.7.7:41000", peer=("10.0.5.5", 1))
    assert client_addr(view, unknown, CLIENT.identity) == ("10.0.5.5", 1)


@pytest.mark.parametrize("port", [15000, 15020, 15021, 15053, 15090, 15001, 15006])
async def test_hbone_to_a_port_reserved_for_the_proxy_is_refused(port):
    # A valid identity's CONNECT to <pod IP>:15020 used to get 200 and the
    # proxy's Prometheus output; no reserved port is reachable through a tunnel.
    pi = FakeInputs(make_view())
    answer = await Inbound(pi).on_connect(connect_request(f"10.0.1.1:{port}"), "10.0.1.1")
    assert isinstance(answer, Reject) and answer.status == 400
    assert "reserved for the proxy" in answer.reason
    assert pi.connected == []


@pytest.mark.parametrize("port", [15000, 15020, 15021])
async def test_captured_plaintext_to_a_reserved_port_is_refused(port):
    pi = FakeInputs(make_view(), app=FakeEnd([b"metrics"]))
    down = FakeEnd([b"GET /metrics HTTP/1.1\r\n\r\n"])
    await InboundPassthrough(pi).handle(down, (SERVER_A.ips[0], port), 100.0)
    assert down.aborted and pi.connected == []


async def test_a_configured_metrics_port_is_refused_like_the_default():
    """`--metrics-port 9464`: that port is the proxy's too, never the app's."""
    from dataclasses import replace
    pi = FakeInputs(make_view())
    pi.options = replace(pi.options, service_ports=frozenset({9464, 0}))
    answer = await Inbound(pi).on_connect(connect_request("10.0.1.1:9464"), "10.0.1.1")
    assert isinstance(answer, Reject) and answer.status == 400
    # Without that setting 9464 is an ordinary app port.
    other = await Inbound(FakeInputs(make_view())).on_connect(
        connect_request("10.0.1.1:9464"), "10.0.1.1")
    assert not (isinstance(other, Reject) and "reserved" in other.reason)


def test_ztunnel_run_passes_the_supervisor_ports_to_the_proxy():
    from shoal.ztunnel.options import ZtunnelOptions
    opts = ZtunnelOptions(node="n1", service_ports=frozenset({9464, 15000, 0}))
    assert {9464, 15000} <= opts.inbound_refused_ports and 0 not in opts.inbound_refused_ports
