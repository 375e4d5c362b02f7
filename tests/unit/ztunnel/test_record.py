"""One connection's telemetry: opened once, closed once, bytes exact (record.py)."""

from __future__ import annotations

import logging

from shoal.ztunnel import telemetry
from shoal.ztunnel.proxy.record import ConnectionRecord, Refused, Tracker
from tests.unit.ztunnel.conftest import CLIENT, SERVER_A
from tests.unit.ztunnel.fakes import FakeClock, FakeMetrics


def make(reporter=telemetry.SOURCE):
    metrics, clock = FakeMetrics(), FakeClock()
    tracker = Tracker(metrics, clock=clock)
    meta = telemetry.ConnectionMeta(reporter=reporter, src_addr="10.0.0.1:40000",
                                    dst_addr="10.0.1.1:15008", src_workload=CLIENT,
                                    dst_workload=SERVER_A)
    return tracker, metrics, clock, tracker.start(meta)


def access_lines(caplog):
    return [r for r in caplog.records if r.name.endswith("access")]


def test_open_then_close_counts_each_once_and_logs_one_line(caplog):
    caplog.set_level(logging.INFO)
    tracker, m, clock, rec = make()
    rec.open()
    clock.now += 0.25
    rec.close(request_bytes=10, response_bytes=20)
    rec.close(request_bytes=99, response_bytes=99)          # idempotent
    assert m.counts == {("opened", "source", "-"): 1, ("closed", "source", "-"): 1,
                        ("received", "source", "-"): 10, ("sent", "source", "-"): 20,
                        ("sockets_open", "source", "-"): 0}      # +1 at open, -1 at close
    [line] = access_lines(caplog)
    assert line.levelno == logging.INFO
    assert line.fields["bytes_sent"] == 10 and line.fields["bytes_recv"] == 20
    assert line.fields["duration"] == "250ms"


def test_refused_before_open_counts_the_open_with_the_refusal_flags(caplog):
    tracker, m, _, rec = make()
    rec.close(request_bytes=3, response_bytes=0, error="NO_HEALTHY_UPSTREAM: none",
              flags="CONNECT")
    assert m.counts[("opened", "source", "CONNECT")] == 1
    assert m.counts[("closed", "source", "CONNECT")] == 1
    assert ("opened", "source", "-") not in m.counts
    [line] = access_lines(caplog)
    assert line.levelno == logging.ERROR and line.fields["error"].startswith("NO_HEALTHY")


def test_refused_after_open_keeps_the_plain_open_and_flags_the_close():
    _, m, _, rec = make()
    rec.open()
    refused = Refused("DENY", "HBONE 10.0.1.1:8080: denied (status 401)")
    rec.close(request_bytes=0, response_bytes=0, error=refused.error, flags=refused.flags)
    # ztunnel's istio_tcp_connections_failed_total counts it, with the flags.
    assert m.counts == {("opened", "source", "-"): 1, ("closed", "source", "DENY"): 1,
                        ("failed", "source", "DENY"): 1, ("sockets_open", "source", "-"): 0}


def test_open_replaces_the_labels_once_the_destination_is_known():
    _, m, _, rec = make()
    routed = telemetry.ConnectionMeta(reporter=telemetry.SOURCE, src_addr="a", dst_addr="b",
                                      dst_service=None, mtls=True)
    rec.open(routed)
    assert rec.meta is routed


def test_live_bytes_are_reported_while_open_and_settled_exactly_at_close():
    tracker, m, _, rec = make(telemetry.DESTINATION)
    totals = {"req": 0, "resp": 0}
    rec.open()
    rec.track(lambda: totals["req"], lambda: totals["resp"])
    totals.update(req=100, resp=5)
    tracker.report()
    assert (m.total("received"), m.total("sent")) == (100, 5)
    assert tracker.open_count() == 1
    totals.update(req=130, resp=5)
    tracker.report()
    rec.close(request_bytes=140, response_bytes=9)
    assert (m.total("received"), m.total("sent")) == (140, 9)
    assert tracker.open_count() == 0
    tracker.report()                                        # closed: nothing more
    assert (m.total("received"), m.total("sent")) == (140, 9)


def test_a_connection_gone_without_close_is_forgotten_after_its_last_report():
    tracker, m, _, rec = make()
    gone = {"yes": False}
    rec.track(lambda: 7, lambda: 0, gone=lambda: gone["yes"])
    tracker.report()
    assert tracker.open_count() == 1
    gone["yes"] = True
    tracker.report()
    assert tracker.open_count() == 0 and m.total("received") == 7


def test_destination_reporter_unflips_bytes_in_the_access_log(caplog):
    caplog.set_level(logging.INFO)
    _, _, _, rec = make(telemetry.DESTINATION)
    rec.open()
    rec.close(request_bytes=10, response_bytes=20)
    [line] = access_lines(caplog)
    assert line.fields["bytes_sent"] == 20 and line.fields["bytes_recv"] == 10
    assert line.fields["direction"] == "inbound"


def test_records_are_distinct_keys():
    tracker, _, _, rec = make()
    other = tracker.start(rec.meta)
    assert isinstance(other, ConnectionRecord) and other is not rec
    rec.track(lambda: 0, lambda: 0)
    other.track(lambda: 0, lambda: 0)
    assert tracker.open_count() == 2


def test_plaintext_inbound_has_no_source_identity():
    # An IP is not an identity: plaintext inbound reports unknown source labels.
    meta = telemetry.ConnectionMeta(reporter=telemetry.DESTINATION, src_addr="10.0.0.1:5",
                                    dst_addr="10.0.1.1:80")
    labels = telemetry.tcp_labels(meta)
    assert labels["source_principal"] == "unknown" and labels["source_workload"] == "unknown"
    assert labels["connection_security_policy"] == "unknown"
    assert "src.identity" not in telemetry.access_fields(meta, bytes_sent=0, bytes_recv=0,
                                                         duration=0)
    verified = telemetry.ConnectionMeta(reporter=telemetry.DESTINATION, src_addr="10.0.0.1:5",
                                        dst_addr="10.0.1.1:80", mtls=True,
                                        src_identity="spiffe://cluster.local/ns/a/sa/b")
    labels = telemetry.tcp_labels(verified)
    assert labels["source_principal"] == "spiffe://cluster.local/ns/a/sa/b"
    assert labels["connection_security_policy"] == "mutual_tls"


def test_tracking_a_connection_arms_the_report_timer_until_none_is_left():
    """The proxy's byte reports run only while connections are tracked
    (Proxy._report_bytes on a WhileBusy, armed by `on_live`)."""
    from types import SimpleNamespace

    from shoal.ztunnel.proxy.netns import Proxy
    tracker, _, _, rec = make()
    armed = []
    tracker.on_live = lambda: armed.append(1)
    rec.open()
    totals = [0, 0]
    rec.track(lambda: totals[0], lambda: totals[1])
    assert armed == [1], "a tracked connection did not arm the report timer"
    proxy = Proxy.__new__(Proxy)
    proxy.inputs = SimpleNamespace(tracker=tracker)
    assert proxy._report_bytes(0.0) is True, "stopped reporting an open connection"
    rec.close(request_bytes=1, response_bytes=1)
    assert proxy._report_bytes(0.0) is False, "still reporting with no connection open"
