"""Who may obtain a certificate for which identity.

Istio lets ztunnel request certificates on behalf of pods on its node only
(impersonation, reference/istio-ztunnel.md §7). Our rule, checked after the
mutual-TLS handshake with the caller's credential:

- a node credential (CN `node:<name>`, identity …/ns/istio-system/sa/ztunnel)
  may obtain the identity of any pod the config schedules on that node;
- a waypoint credential (CN `waypoint:<ns>/<name>`) may obtain only the
  identity its own credential carries (every replica shares it);
- anything else is refused with 403 and the reason.

`identities_on_node(node) -> set[str]` comes from the config (the routing
compiler's workloads, `Workload.node` and `Workload.identity`, loaded with
routing's DirectorySource so `--overlay` pods of Deployment replicas count),
or is injected by tests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shoal.core import log
from shoal.controlplane.authority import SigningError
from shoal.core.constants import DEFAULT_TRUST_DOMAIN
from shoal.core.identity.spiffe import Identity

IdentitiesOnNode = Callable[[str], set[str]]

# How often a request may trigger a re-scan of the config directory; a burst
# of CSRs after a node restart must not re-parse the YAML for each one.
CONFIG_RESCAN_INTERVAL = 1.0

_log = log.get("ca.nodeauth")


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """An authenticated CA client. kind: "node" or "waypoint"."""
    kind: str
    name: str
    identity: Identity


def authorize(caller: Caller, wanted: Identity, identities_on_node: IdentitiesOnNode) -> None:
    """Raise SigningError(403) unless `caller` may obtain `wanted`."""
    if caller.kind == "waypoint":
        if wanted != caller.identity:
            raise SigningError("not_waypoint_identity",
                               f"waypoint {caller.name} may only obtain its own identity "
                               f"{caller.identity.uri}, not {wanted.uri}", 403)
        return
    if caller.kind != "node":
        raise SigningError("unknown_caller", f"unknown caller kind {caller.kind!r}", 403)
    allowed = identities_on_node(caller.name)
    if wanted.uri not in allowed:
        raise SigningError("not_on_node",
                           f"node {caller.name} has no pod running as {wanted.uri}; a node proxy "
                           f"may only obtain identities of pods scheduled on its node", 403)


# --------------------------------------------------------------------------
# The config directory as a source of (node -> identities)

def _workloads_from_routing(config_dir: Path, overlay: Path | None, trust_domain: str):
    """Compiled workloads via routing (the same compiler the proxies use).

    Returns None when the routing package is not importable.
    Raises:
        core.model.ConfigError: the config is invalid (caller keeps the last good view).
    """
    try:
        from shoal.routing.compile import CompileOptions, compile_config
        from shoal.core.records import Workload
        from shoal.routing.source import DirectorySource
    except ImportError:
        return None
    cfg, extra = DirectorySource(config_dir, overlay=overlay, use_inotify=False).load()
    records = compile_config(cfg, extra_pods=extra, options=CompileOptions(trust_domain=trust_domain))
    return [r for r in records if isinstance(r, Workload)]


def _pods_from_yaml(config_dir: Path, trust_domain: str) -> dict[str, set[str]]:
    """Fallback without the routing package: Pods with spec.nodeName, from the YAML."""
    import yaml
    out: dict[str, set[str]] = {}
    for path in sorted(config_dir.rglob("*.y*ml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as e:
            _log.warning("cannot read config file", extra={"fields": {"file": str(path), "error": str(e)}})
            continue
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "Pod":
                continue
            meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
            node = spec.get("nodeName")
            if not node:
                continue
            sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
            ns = meta.get("namespace") or "default"
            out.setdefault(node, set()).add(f"spiffe://{trust_domain}/ns/{ns}/sa/{sa}")
    return out


class ConfigIdentities:
    """`identities_on_node` over a config directory, re-read when files change."""

    def __init__(self, config_dir: str | os.PathLike, *, overlay: str | os.PathLike | None = None,
                 trust_domain: str = DEFAULT_TRUST_DOMAIN,
                 clock: Callable[[], float] = time.monotonic):
        self.config_dir = Path(config_dir)
        self.overlay = Path(overlay) if overlay else None
        self.trust_domain = trust_domain
        self.clock = clock
        self._stamp: tuple = ()
        self._checked = float("-inf")
        self._by_node: dict[str, set[str]] = {}

    def _dir_stamp(self) -> tuple:
        files = []
        roots = [self.config_dir] + ([self.overlay] if self.overlay else [])
        for p in sorted(f for r in roots for f in r.rglob("*.y*ml")):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(files)

    def _reload(self) -> None:
        workloads = None
        try:
            workloads = _workloads_from_routing(self.config_dir, self.overlay, self.trust_domain)
        except Exception as e:  # a bad config (ConfigError) keeps the last good view
            _log.warning("config refused; keeping the last good node view",
                         extra={"fields": {"config": str(self.config_dir), "error": str(e)}})
            return
        if workloads is None:
            self._by_node = _pods_from_yaml(self.config_dir, self.trust_domain)
            return
        by_node: dict[str, set[str]] = {}
        for w in workloads:
            if w.node:
                by_node.setdefault(w.node, set()).add(w.identity)
        self._by_node = by_node

    def __call__(self, node: str) -> set[str]:
        now = self.clock()
        if now - self._checked >= CONFIG_RESCAN_INTERVAL:
            self._checked = now
            stamp = self._dir_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                self._reload()
        return set(self._by_node.get(node, ()))
