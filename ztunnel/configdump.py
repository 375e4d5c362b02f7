"""`/config_dump` in Istio ztunnel's layout, so `istioctl ztunnel-config` reads it.

Pure: records and certificates in, JSON-able data out. The field names and
values follow ztunnel's serde output (src/state/workload.rs, service.rs,
src/rbac.rs, src/admin.rs; camelCase) as istioctl's reader expects them
(istioctl/pkg/writer/ztunnel/configdump/api.go):

    workloads     [{uid, workloadIps, waypoint: {destination: "net/ip",
                    hboneMtlsPort}, protocol, name, namespace, serviceAccount,
                    workloadName, workloadType, canonicalName, canonicalRevision,
                    clusterId, trustDomain, node, network, status: Healthy|Unhealthy,
                    authorizationPolicies, services, capacity, ...}]
    services      [{name, namespace, hostname, vips: ["net/ip"], ports: {"80": 8080},
                    endpoints: {"uid:net/ip": {workloadUid, service, address, port,
                    status}}, waypoint, subjectAltNames, ipFamilies, loadBalancer}]
    policies      [{name, namespace, scope: Global|Namespace|WorkloadSelector,
                    action: Allow|Deny, rules: [[[match]]], dryRun}]  (what
                    istiod sends ztunnel: no AUDIT, CUSTOM or targetRef policies)
    certificates  [{identity, state, certChain: [{pem, serialNumber (decimal),
                    validFrom, expirationTime}], rootCerts: [...]}]  (made by the
                    certificate manager, core.identity.certs.cert_json)
    workloadState {uid: {info: {name, namespace, trustDomain, serviceAccount},
                    connections: {inbound: [...], outbound: [...]}}}
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from shoal.core.authz import ALLOW, DENY, L4_WHEN_KEYS, rule_has_l7
from shoal.core.records import Authorization, Rule, Service, Source, Waypoint, Workload
from shoal.routing.view import View

HBONE_MTLS_PORT = 15008
_SCOPES = {"GLOBAL": "Global", "NAMESPACE": "Namespace", "WORKLOAD_SELECTOR": "WorkloadSelector"}
_ACTIONS = {ALLOW: "Allow", DENY: "Deny"}


def network_address(network: str, ip: str) -> str:
    """ztunnel's NetworkAddress text: "<network>/<ip>" (network may be empty)."""
    return f"{network}/{ip}"


def _health(status: str) -> str:
    return "Healthy" if status == "HEALTHY" else "Unhealthy"


def _str_ports(ports: Mapping[int, int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(ports.items())}


def waypoint_addresses(services: Iterable[Service], waypoints: Iterable[Waypoint]
                       ) -> dict[str, dict[str, Any]]:
    """waypoint key "<ns>/<name>" -> ztunnel's GatewayAddress (its Service's first VIP)."""
    by_key = {s.key: s for s in services}
    out = {}
    for wp in waypoints:
        svc = by_key.get(wp.service)
        if svc is not None and svc.vips:
            out[f"{wp.namespace}/{wp.name}"] = {
                "destination": network_address(svc.network, svc.vips[0]),
                "hboneMtlsPort": HBONE_MTLS_PORT}
    return out


def workload_json(w: Workload, waypoints: Mapping[str, dict[str, Any]], cluster: str
                  ) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": w.uid, "workloadIps": list(w.ips), "protocol": w.protocol, "name": w.name,
        "namespace": w.namespace, "trustDomain": w.trust_domain,
        "serviceAccount": w.service_account, "workloadName": w.workload_name,
        "workloadType": w.workload_type, "canonicalName": w.canonical_name,
        "canonicalRevision": w.canonical_revision, "node": w.node, "network": w.network,
        "status": _health(w.status), "clusterId": cluster, "capacity": w.capacity,
        "networkMode": "Standard",
        "services": {k: _str_ports(v) for k, v in sorted(w.services.items())},
        "authorizationPolicies": list(w.authorization_policies),
    }
    if w.waypoint is not None and w.waypoint.key in waypoints:
        out["waypoint"] = waypoints[w.waypoint.key]
    return out


def _ip_families(vips: Iterable[str]) -> str:
    versions = {ipaddress.ip_address(v).version for v in vips}
    if versions == {4, 6}:
        return "Dual"
    return "IPv6" if versions == {6} else "IPv4"


def service_json(s: Service, workloads: Mapping[str, Workload],
                 waypoints: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    endpoints = {}
    for uid in s.endpoints:
        w = workloads.get(uid)
        if w is None:
            continue
        address = network_address(w.network, w.ips[0]) if w.ips else ""
        endpoints[f"{uid}:{address}"] = {
            "workloadUid": uid, "service": s.key, "address": address,
            "port": _str_ports(w.services.get(s.key, {})), "status": _health(w.status)}
    out: dict[str, Any] = {
        "name": s.name, "namespace": s.namespace, "hostname": s.hostname,
        "vips": [network_address(s.network, v) for v in s.vips],
        "ports": {str(p.port): p.target_port for p in s.ports},
        "endpoints": endpoints, "subjectAltNames": list(s.subject_alt_names),
        "ipFamilies": _ip_families(s.vips),
        "loadBalancer": {"mode": s.load_balancing.mode.capitalize(),
                         "routingPreferences": list(s.load_balancing.routing_preference),
                         "healthPolicy": "".join(p.capitalize() for p in
                                                 s.load_balancing.health_policy.split("_"))},
    }
    if s.waypoint is not None and s.waypoint.key in waypoints:
        out["waypoint"] = waypoints[s.waypoint.key]
    return out


# --- policies: istiod's translation (authorization.go handleRule) -----------

def _string_match(value: str) -> dict[str, Any]:
    """istiod's stringToMatch, serialized as ztunnel's StringMatch enum."""
    if value == "*":
        return {"Presence": []}
    if value.startswith("*"):
        return {"Suffix": value[1:]}
    if value.endswith("*"):
        return {"Prefix": value[:-1]}
    return {"Exact": value}


def _cidr(value: str) -> str | None:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        return None   # istiod's stringToIP skips what it cannot parse


def _ports(values: Iterable[str]) -> list[int]:
    return [int(v) for v in values if v.isdigit() and int(v) <= 65535]


def _prune(match: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in match.items() if v}


def _service_accounts(values: Iterable[str], namespace: str) -> list[dict[str, str]]:
    out = []
    for v in values:
        ns, sep, sa = v.partition("/")
        out.append({"namespace": ns, "serviceAccount": sa} if sep
                   else {"namespace": namespace, "serviceAccount": v})
    return out


def _source_match(s: Source, namespace: str) -> dict[str, Any]:
    return _prune({
        "sourceIps": [c for c in map(_cidr, s.ip_blocks) if c],
        "notSourceIps": [c for c in map(_cidr, s.not_ip_blocks) if c],
        "namespaces": [_string_match(v) for v in s.namespaces],
        "notNamespaces": [_string_match(v) for v in s.not_namespaces],
        "serviceAccounts": _service_accounts(s.service_accounts, namespace),
        "notServiceAccounts": _service_accounts(s.not_service_accounts, namespace),
        "principals": [_string_match(v) for v in s.principals],
        "notPrincipals": [_string_match(v) for v in s.not_principals]})


_WHEN_FIELDS = {"source.namespace": ("namespaces", _string_match),
                "source.principal": ("principals", _string_match),
                "source.ip": ("sourceIps", _cidr), "destination.ip": ("destinationIps", _cidr)}


def _when_match(key: str, values: Iterable[str], not_values: Iterable[str]) -> dict[str, Any]:
    if key not in L4_WHEN_KEYS:
        return {}
    if key == "destination.port":
        return _prune({"destinationPorts": _ports(values), "notDestinationPorts": _ports(not_values)})
    name, conv = _WHEN_FIELDS[key]
    negative = "not" + name[0].upper() + name[1:]
    return _prune({name: [x for x in map(conv, values) if x],
                   negative: [x for x in map(conv, not_values) if x]})


def rule_clauses(rule: Rule, namespace: str) -> list[list[dict[str, Any]]]:
    """One Istio rule as ztunnel's clauses (to, from, then one per `when`)."""
    clauses = []
    if rule.to:
        clauses.append([_prune({"destinationPorts": _ports(o.ports),
                                "notDestinationPorts": _ports(o.not_ports)}) for o in rule.to])
    if rule.from_:
        clauses.append([_source_match(s, namespace) for s in rule.from_])
    for c in rule.when:
        clauses.append([_when_match(c.key, c.values, c.not_values)])
    return clauses


def policy_json(p: Authorization) -> dict[str, Any] | None:
    """The Authorization istiod sends ztunnel for `p`, None when it sends none."""
    if p.action not in _ACTIONS or p.target_refs or p.scope not in _SCOPES:
        return None
    rules = [rule_clauses(r, p.namespace) for r in p.rules
             if not (p.action == ALLOW and rule_has_l7(r))]
    return {"name": p.name, "namespace": p.namespace, "scope": _SCOPES[p.scope],
            "action": _ACTIONS[p.action], "rules": rules, "dryRun": p.dry_run}


def workload_state(workloads: Iterable[Workload], inbound: Mapping[str, list[dict[str, Any]]],
                   outbound: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """ztunnel's workloadState: per local workload uid, its info and connections."""
    out = {}
    for w in workloads:
        out[w.uid] = {"info": {"name": w.name, "namespace": w.namespace,
                               "trustDomain": w.trust_domain,
                               "serviceAccount": w.service_account},
                      "connections": {"inbound": inbound.get(w.uid, []),
                                      "outbound": outbound.get(w.uid, [])}}
    return out


def ztunnel_dump(view: View, cluster: str) -> dict[str, Any]:
    """workloads, services and policies of one routing generation."""
    items = view.items_many(("workload", "service", "authorization", "waypoint"))
    services = items["service"]
    waypoints = waypoint_addresses(services, items["waypoint"])
    by_uid = {w.uid: w for w in items["workload"]}
    policies = [pj for pj in map(policy_json, items["authorization"]) if pj is not None]
    return {
        "workloads": [workload_json(w, waypoints, cluster)
                      for w in sorted(by_uid.values(), key=lambda w: w.uid)],
        "services": [service_json(s, by_uid, waypoints)
                     for s in sorted(services, key=lambda s: s.key)],
        "policies": sorted(policies, key=lambda p: (p["namespace"], p["name"])),
    }
