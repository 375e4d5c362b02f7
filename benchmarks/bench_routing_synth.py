"""Synthetic meshes for the routing benchmarks (no test functions here).

`synth_config(n_workloads)` builds validated resources directly (skipping
YAML so the table, not the parser, is measured): namespaces of 1000 pods,
one Service per 10 pods, one AuthorizationPolicy per 100 pods (a mix of
selector and namespace scopes), nodes of 100 pods.
"""

from __future__ import annotations

import dataclasses

from shoal.core.model import AuthorizationPolicy, ConfigSet, Meta, Namespace, Pod, Service, ServicePortSpec
from shoal.core.records import Rule, Source

PODS_PER_NS = 1000
PODS_PER_SERVICE = 10
PODS_PER_POLICY = 100
PODS_PER_NODE = 100


def _ip(prefix: int, i: int) -> str:
    return f"{prefix}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def synth_pod(i: int, *, ip_prefix: int = 10, generation: int = 0) -> Pod:
    ns = f"ns-{i // PODS_PER_NS}"
    labels = {"app": f"svc-{i // PODS_PER_SERVICE}", "version": f"v{generation}",
              "pol": f"p-{i // PODS_PER_POLICY}"}
    return Pod(meta=Meta(kind="Pod", name=f"pod-{i}", namespace=ns, labels=labels),
               node=f"node-{i // PODS_PER_NODE}", service_account=f"sa-{i % 7}",
               ips=(_ip(ip_prefix, i),), container_ports={"http": 8080})


def synth_config(n: int, *, n_services: int | None = None, n_policies: int | None = None) -> ConfigSet:
    out: list = []
    for k in range((n + PODS_PER_NS - 1) // PODS_PER_NS):
        out.append(Namespace(meta=Meta(kind="Namespace", name=f"ns-{k}",
                                       labels={"istio.io/dataplane-mode": "ambient"})))
    out += [synth_pod(i) for i in range(n)]
    for s in range(n_services if n_services is not None else n // PODS_PER_SERVICE):
        ns = f"ns-{(s * PODS_PER_SERVICE) // PODS_PER_NS}"
        out.append(Service(meta=Meta(kind="Service", name=f"svc-{s}", namespace=ns),
                           selector={"app": f"svc-{s}"}, cluster_ips=(_ip(11, s),),
                           ports=(ServicePortSpec(port=80, target_port_name="http", name="http"),)))
    rule = Rule(from_=(Source(namespaces=("ns-0",)),))
    for p in range(n_policies if n_policies is not None else n // PODS_PER_POLICY):
        ns = f"ns-{(p * PODS_PER_POLICY) // PODS_PER_NS}"
        selector = {"pol": f"p-{p}"} if p % 10 else None
        out.append(AuthorizationPolicy(meta=Meta(kind="AuthorizationPolicy", name=f"pol-{p}",
                                                 namespace=ns), selector=selector, rules=(rule,)))
    return ConfigSet(resources=tuple(out))


def bump_pod(cfg: ConfigSet, i: int, generation: int) -> ConfigSet:
    """The same config with pod i relabelled (a one-pod update)."""
    new = synth_pod(i, generation=generation)
    res = list(cfg.resources)
    for k, r in enumerate(res):
        if isinstance(r, Pod) and r.meta.name == new.meta.name and r.meta.namespace == new.meta.namespace:
            res[k] = new
            break
    return dataclasses.replace(cfg, resources=tuple(res))
