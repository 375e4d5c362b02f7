"""Who may obtain a certificate for which identity.

Istio lets ztunnel request certificates on behalf of pods on its node only
(impersonation, reference/istio-ztunnel.md §7). Our rule, checked after the
mutual-TLS handshake with the caller's credential:

- a node credential (CN `node:<name>`, identity …/ns/istio-system/sa/ztunnel)
  may obtain the identity of any pod the config schedules on that node;
- a waypoint credential (CN `waypoint:<ns>/<name>`) may obtain only the
  identity its own credential carries (every replica shares it);
- anything else is refused with 403 and the reason.

`identities_on_node(node) -> set[str]` comes from the config, read with the
one config model (`core.model`: Pods, Deployment replicas and `--overlay`
pods, with the precedence the routing compiler uses), or is injected by tests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shoal.controlplane.authority import SigningError
from shoal.core import log
from shoal.core.constants import DEFAULT_TRUST_DOMAIN
from shoal.core.identity.spiffe import Identity, IdentityError
from shoal.core.model import ConfigError, Pod, effective_pods, load_dir, yaml_files

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

def identities_by_node(config_dir: Path, overlay: Path | None, trust_domain: str
                       ) -> dict[str, set[str]]:
    """node -> SPIFFE ids of the pods the config schedules there.

    Raises:
        core.model.ConfigError: the config is invalid (caller keeps the last good view).
    """
    cfg = load_dir(config_dir)
    # The overlay (a mesh builder's pods with IPs) may not exist yet.
    extra = load_dir(overlay).of(Pod) if overlay is not None and overlay.exists() else []
    by_node: dict[str, set[str]] = {}
    for pod in effective_pods(cfg.resources, extra).values():
        if pod.node:
            identity = Identity(trust_domain=trust_domain, namespace=pod.meta.namespace,
                                service_account=pod.service_account)
            by_node.setdefault(pod.node, set()).add(identity.uri)
    return by_node


class ConfigIdentities:
    """`identities_on_node` over a config directory, re-read when files change.

    With `background=True` (the CA server) a request only reads the view
    parsed last; `refresh()` is called by the server's own poll loop, off the
    request path, so no CSR ever waits for YAML parsing. Otherwise (tools,
    tests) a call re-checks the files at most every CONFIG_RESCAN_INTERVAL.
    """

    def __init__(self, config_dir: str | os.PathLike, *, overlay: str | os.PathLike | None = None,
                 trust_domain: str = DEFAULT_TRUST_DOMAIN,
                 clock: Callable[[], float] = time.monotonic, background: bool = False):
        self.config_dir = Path(config_dir)
        self.overlay = Path(overlay) if overlay else None
        self.trust_domain = trust_domain
        self.clock = clock
        self._stamp: tuple = ()
        self._checked = float("-inf")
        self._by_node: dict[str, set[str]] = {}
        self.background = background

    def _dir_stamp(self) -> tuple:
        files = []
        roots = [r for r in (self.config_dir, self.overlay) if r is not None and r.exists()]
        for p in sorted(f for r in roots for f in yaml_files(r)):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(files)

    def _reload(self) -> None:
        try:
            self._by_node = identities_by_node(self.config_dir, self.overlay, self.trust_domain)
        except (ConfigError, OSError, IdentityError) as e:   # keep the last good view
            _log.warning("config refused; keeping the last good node view",
                         extra={"fields": {"config": str(self.config_dir), "error": str(e)}})

    def refresh(self) -> bool:
        """Re-read the config if its files changed; True if they had."""
        stamp = self._dir_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self._reload()
        return True

    def __call__(self, node: str) -> set[str]:
        if not self.background:
            now = self.clock()
            if now - self._checked >= CONFIG_RESCAN_INTERVAL:
                self._checked = now
                self.refresh()
        return set(self._by_node.get(node, ()))
