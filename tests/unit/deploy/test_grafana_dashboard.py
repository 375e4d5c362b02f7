"""deploy/grafana/shoal-dashboard.json queries only series shoal exports.

Every metric name in every panel's PromQL must be a series the proxies'
:15020/metrics can carry (core.metrics' objects, rendered through
prometheus_client, plus the process collector), and every label it groups or
filters by must be one of that metric's labels: a typo would otherwise be an
empty panel, not an error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from shoal.core.metrics import IstioMetrics
from shoal.routing.kube import metrics as kube_metrics

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "shoal-dashboard.json"
PROMQL_WORDS = {"sum", "by", "rate", "topk", "histogram_quantile", "min", "max", "time", "le",
                "without", "avg", "irate", "increase", "count"}
METRIC = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(?=\{|\[|\)|$|\s*[-/*+])")
SELECTOR = re.compile(r"([a-z_][a-z0-9_]*)\{([^}]*)\}")
BY = re.compile(r"by \(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Series name -> its label names, as /metrics would show them."""
    m = IstioMetrics()
    registry = CollectorRegistry()
    for metric in [*m.all(), *kube_metrics.all_metrics()]:
        names = metric._labelnames
        (metric.labels(*["x"] * len(names)) if names else metric)
        registry.register(metric)
    ProcessCollector(registry=registry)
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def exprs():
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", ()):
            yield panel["title"], target["expr"]


@pytest.mark.parametrize("title,expr", list(exprs()))
def test_every_queried_series_and_label_exists(title, expr):
    series = exported()
    bare = re.sub(r"\{[^}]*\}", "", BY.sub("", expr))       # drop selectors and groupings
    names = {n for n in METRIC.findall(bare) if n not in PROMQL_WORDS}
    assert names, f"{title}: no metric found in {expr!r}"
    for name in names:
        assert name in series, f"{title}: {name} is not exported by shoal"
    for name, body in SELECTOR.findall(expr):
        for label in re.findall(r"([a-z_]+)\s*[!=]~?", body):
            assert label in series[name], f"{title}: {name} has no label {label}"
    for group in BY.findall(expr):
        for label in (g.strip() for g in group.split(",")):
            if label != "le":
                assert any(label in series[n] for n in names), \
                    f"{title}: no queried metric has label {label}"


def test_dashboard_covers_ztunnel_and_waypoint():
    text = DASHBOARD.read_text()
    for name in ("istio_tcp_connections_opened_total", "istio_tcp_connections_failed_total",
                 "istio_tcp_sockets_open", "istio_requests_total", "process_open_fds",
                 "grpc_response_status", "istio_request_messages_total",
                 "istio_response_messages_total", "istio_xds_connection_terminations_total",
                 "istio_xds_message_total"):
        assert name in text
