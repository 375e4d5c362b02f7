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
from typing import Callable

from shoal.controlplane.authority import SigningError
from shoal.core import log
from shoal.core.constants import DEFAULT_TRUST_DOMAIN
from shoal.core.identity.spiffe import Identity, IdentityError
from shoal.core.model import ConfigError, ConfigSet, Pod, effective_pods
from shoal.routing.source import DirectorySource

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

def identities_by_node(config: ConfigSet, overlay_pods: list[Pod], trust_domain: str
                       ) -> dict[str, set[str]]:
    """node -> SPIFFE ids of the pods `config` (with a mesh builder's overlay
    pods) schedules there, with the precedence the routing compiler uses."""
    by_node: dict[str, set[str]] = {}
    for pod in effective_pods(config.resources, overlay_pods).values():
        if pod.node:
            identity = Identity(trust_domain=trust_domain, namespace=pod.meta.namespace,
                                service_account=pod.service_account)
            by_node.setdefault(pod.node, set()).add(identity.uri)
    return by_node


class ConfigIdentities:
    """`identities_on_node` over a config directory, re-read when files change.

    The directory is read by routing's `DirectorySource`, as the config
    watcher reads it: only changed files are parsed again, and a rewrite that
    keeps a file's (mtime, size, inode) is still caught.

    With `background=True` (the CA server) a request only reads the view
    parsed last; the server's own loop waits on `source` (inotify) and calls
    `refresh()` off the request path, so no CSR ever waits for YAML parsing.
    Otherwise (tools, tests) a call re-checks the files at most every
    CONFIG_RESCAN_INTERVAL.
    """

    def __init__(self, config_dir: str | os.PathLike, *, overlay: str | os.PathLike | None = None,
                 trust_domain: str = DEFAULT_TRUST_DOMAIN,
                 clock: Callable[[], float] = time.monotonic, background: bool = False):
        self.source = DirectorySource(config_dir, overlay=overlay, use_inotify=background)
        self.trust_domain = trust_domain
        self.clock = clock
        self._loaded = False
        self._checked = float("-inf")
        self._by_node: dict[str, set[str]] = {}
        self.background = background

    def refresh(self, *, changed: bool = False) -> bool:
        """Re-read the config if its files may have changed, or if the caller
        knows they did (`changed`: an inotify event); True if it was re-read.
        An invalid config keeps the last good view."""
        if self._loaded and not changed and not self.source.stale():
            return False
        self._loaded = True
        try:
            config, overlay_pods = self.source.load()
            self._by_node = identities_by_node(config, overlay_pods, self.trust_domain)
        except (ConfigError, OSError, IdentityError) as e:   # keep the last good view
            _log.warning("config refused; keeping the last good node view",
                         extra={"fields": {"config": self.source.describe(), "error": str(e)}})
        return True

    def close(self) -> None:
        self.source.close()

    def __call__(self, node: str) -> set[str]:
        if not self.background:
            now = self.clock()
            if now - self._checked >= CONFIG_RESCAN_INTERVAL:
                self._checked = now
                self.refresh()
        return set(self._by_node.get(node, ()))
