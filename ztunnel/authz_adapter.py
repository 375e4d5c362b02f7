"""Bridge from ztunnel's connection facts to `core.authz` (layer L4)."""

from __future__ import annotations

from typing import Iterable

from shoal.core import authz
from shoal.core.records import Authorization
from shoal.ztunnel.inbound import ConnInfo


def evaluate_l4(policies: Iterable[Authorization], conn: ConnInfo) -> tuple[bool, str, str]:
    """(allowed, reason, policy key) for one connection, Istio's L4 semantics.

    Plaintext connections (15006) have no identity: `source_principal=None`,
    so principals/namespaces never match them (Istio's `src_identity=None`).
    """
    request = authz.Request(source_principal=conn.src_identity or None, source_ip=conn.src_ip,
                            destination_ip=conn.dst_ip, destination_port=conn.dst_port)
    decision = authz.evaluate(policies, request, layer=authz.L4)
    reason = decision.reason
    if decision.policy_key:
        reason = f"{reason} {decision.policy_key}"
    return decision.allowed, reason, decision.policy_key
