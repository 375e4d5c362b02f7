"""ZtunnelApp: the ztunnel as a shards app (one instance per worker process).

Fork contract: `__init__` (supervisor, pre-fork) keeps the validated options
only; `start` (worker, post-fork) builds the CA client, the certificate
manager and the proxies, and opens the listeners.

- dedicated mode: one `Proxy` in this netns, scope = every workload of the
  node; HBONE listeners per local workload IP.
- in-pod mode: the node agent hands each enrolled pod's netns over ZDS;
  every worker opens that pod's 15001/15006/15008 inside it (SO_REUSEPORT,
  mark 0x539) on AddWorkload and releases them on DelWorkload (the shards
  supervisor closes its copies too, so nothing stays bound in the pod).
  A booting worker waits (bounded) for the agent's snapshot, so enrolled
  pods keep the very same listeners across a worker restart or SIGHUP.
  Each pod has its own Proxy, hence its own HBONE pool (sockets in its netns).

A hook on the worker's tick (`ctx.ticker`, no timer of its own) checks the
routing generation: on a change each proxy reconciles its listeners and
certificates and re-checks live inbound connections against the new
policies (closing those now denied). The supervisor pushes each published
generation to the worker, which runs the hook at once (`Ticker.poke`); the
tick itself, at heartbeat pace, is only the safety poll.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any, Callable

from shoal.core import log as shoal_log
from shoal.core.addr import split_host_port
from shoal.core.sockets import PROXY_SOCKET_OPTIONS, DefaultSocketFactory
from shoal.routing.view import View
from shoal.shards.app import App, WorkerContext
from shoal.ztunnel.options import DEDICATED, ZtunnelOptions
from shoal.ztunnel.proxy.inputs import Scope, Shared
from shoal.ztunnel.proxy.netns import Proxy

if TYPE_CHECKING:
    from shoal.core.identity import CertManager
    from shoal.ztunnel.inpod import InPodClient

LOG = shoal_log.get("ztunnel")

# How often a booting worker looks for the first routing generation: the
# watcher publishes within a fraction of a second, so a short poll.
BOOT_POLL_INTERVAL = 0.01
# A removed pod's open connections get this long before they are closed
# (ztunnel drains a deleted pod's connections the same way, briefly).
POD_CLOSE_GRACE = 1.0


class ZtunnelApp(App):
    name = "ztunnel"

    def __init__(self, options: ZtunnelOptions) -> None:
        super().__init__(options)
        self.ctx: WorkerContext            # set by start() (post-fork)
        self.certs: CertManager | None = None
        self.proxies: dict[str, Proxy] = {}     # "" (dedicated) or pod uid -> proxy
        self._netns_fds: dict[str, int] = {}
        self._tasks: list[asyncio.Task] = []
        self._zds: InPodClient | None = None
        self._kept: set[str] = set()
        self._seen_generation = -1

    # -- lifecycle ------------------------------------------------------------
    async def start(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        o: ZtunnelOptions = self.options
        self.certs = make_cert_manager(o, ctx.metrics)
        ctx.metrics.set_build("ztunnel")
        self.shared = Shared(options=o, view=lambda: ctx.routing, certs=self.certs,
                             metrics=ctx.metrics)
        if o.mode == DEDICATED:
            await self._await_routing()
            sockets = ctx.socket_factory(DefaultSocketFactory(PROXY_SOCKET_OPTIONS))
            proxy = Proxy(self.shared, sockets, Scope(node=o.node),
                          fixed_targets=o.fixed_targets, bind=o.bind)
            await proxy.start()
            self.proxies[""] = proxy
        else:
            from shoal.ztunnel.inpod import InPodClient
            zds = self._zds = InPodClient(o.zds_socket, self._on_zds)
            self._tasks.append(asyncio.get_running_loop().create_task(zds.run()))
            await self._await_snapshot(zds)
        # The generation is one shared-memory load: looked at when a new one
        # is pushed (within a millisecond of its publish, which bounds how
        # long a now-denied connection lives on), on each safety tick, and
        # at once first.
        self._check_generation(time.monotonic())
        ctx.ticker.add(self._check_generation)
        LOG.info("ztunnel worker serving", extra={"fields": {
            "node": o.node, "mode": o.mode, "worker": ctx.worker_id}})

    async def _await_routing(self) -> None:
        """Dedicated mode: hold `start()` until the routing table has a first
        generation. The HBONE listeners are per local workload IP, from the
        table; a worker that started on an empty table (after SIGUSR2 the new
        supervisor's watcher publishes a fresh table while its workers boot)
        would leave the slot's inherited listeners unused, so the framework
        closes them and the worker opens new ones a moment later: the old
        sockets' last close could reset a connection queued on them. Bounded
        like the snapshot wait (a config that never loads only delays the boot)."""
        view = self.ctx.routing
        if view.generation:
            return
        t0 = time.monotonic()
        deadline = t0 + self.options.snapshot_wait
        while view.generation == 0 and time.monotonic() < deadline:
            await asyncio.sleep(BOOT_POLL_INTERVAL)
        waited = round(time.monotonic() - t0, 3)
        if view.generation == 0:
            LOG.warning("no routing table yet; serving workloads as they come",
                        extra={"fields": {"waited_s": waited}})
        else:
            LOG.info("first routing table arrived", extra={"fields": {"waited_s": waited}})

    async def _await_snapshot(self, zds: InPodClient) -> None:
        """Hold `start()` until the node agent's first snapshot is applied:
        the pods in it re-open their listeners from the ones this slot's
        previous worker left (restart, SIGHUP), which the framework closes
        if `start()` returns without them. Bounded, so a missing agent only
        delays the boot (the client keeps retrying; pods come later)."""
        try:
            async with asyncio.timeout(self.options.snapshot_wait):
                await zds.connected.wait()
        except TimeoutError:
            LOG.warning("no snapshot from the node agent yet; serving pods as they come",
                        extra={"fields": {"zds_socket": self.options.zds_socket,
                                          "waited_s": self.options.snapshot_wait}})

    async def drain(self, deadline: float) -> None:
        if self._zds is not None:
            self._zds.stop()
        for proxy in self.proxies.values():
            proxy.close_listeners()
        grace = max(0.0, deadline - time.monotonic())
        await asyncio.gather(*(p.close(grace) for p in self.proxies.values()),
                             return_exceptions=True)
        self.ctx.ticker.remove(self._check_generation)
        for t in self._tasks:
            t.cancel()
        if self.certs is not None:
            await self.certs.close()

    def ready(self) -> bool:
        """Ready once every local workload has its certificate (config is
        checked by the admin server: generation > 0)."""
        if self.options.mode != DEDICATED and (self._zds is None or not self._zds.connected.is_set()):
            return False
        return all(p.ready() for p in self.proxies.values())

    def admin_dump(self, view: View) -> dict[str, object]:
        """The top-level /config_dump keys in ztunnel's layout (ztunnel/configdump)."""
        from shoal.core.constants import DEFAULT_CLUSTER
        from shoal.ztunnel import configdump
        out = configdump.ztunnel_dump(view, DEFAULT_CLUSTER)
        local = [w for w in view.items("workload") if w.node == self.options.node]
        by_ip = {ip: w.uid for w in local for ip in w.ips}
        inbound: dict[str, list] = {}
        for p in self.proxies.values():
            for c in p.inputs.connections.snapshot():
                uid = by_ip.get(split_host_port(c["dst"])[0])
                if uid is not None:
                    inbound.setdefault(uid, []).append(
                        {"src": c["src"], "originalDst": c["dst"], "actualDst": c["dst"]})
        out["workloadState"] = configdump.workload_state(local, inbound, {})
        return out

    def admin_sections(self) -> dict[str, Callable[[], object]]:
        # The routing table itself is dumped once, under "routing", by core/admin.
        return {
            "certificates": lambda: self.certs.admin_section()["certificates"] if self.certs else [],
            "connections": lambda: {uid or "node": {"inbound": p.inputs.connections.snapshot(),
                                                    "pool": p.inputs.pool.stats()}
                                    for uid, p in self.proxies.items()},
            "ztunnel": lambda: {"node": self.options.node, "mode": self.options.mode,
                                "proxies": sorted(uid or "node" for uid in self.proxies)},
        }

    def _check_generation(self, now: float) -> None:
        gen = self.ctx.routing.generation
        if gen == self._seen_generation:
            return
        self._seen_generation = gen
        for proxy in list(self.proxies.values()):
            try:
                proxy.reconcile()
            except Exception:
                LOG.exception("reconcile failed")
        self._retain_certificates()

    def _retain_certificates(self) -> None:
        """Keep (and prefetch) the certificates of every local workload, forget
        the rest (Istio forgets certificates no workload on the node needs)."""
        view = self.ctx.routing
        wanted = {w.identity for p in self.proxies.values()
                  for w in p.scope.local_workloads(view)}
        if self.certs is not None and (wanted or view.generation > 0):
            self.certs.retain(wanted)

    # -- in-pod mode ---------------------------------------------------------------
    async def _on_zds(self, event: Any) -> None:
        from shoal.ztunnel.inpod import SnapshotDone, WorkloadAdded, WorkloadDeleted, WorkloadKept
        if isinstance(event, WorkloadAdded):
            await self._add_pod(event.uid, event.netns_fd)
        elif isinstance(event, WorkloadDeleted):
            await self._del_pod(event.uid)
        elif isinstance(event, WorkloadKept):
            self._kept.add(event.uid)
        elif isinstance(event, SnapshotDone):
            for uid in set(self.proxies) - self._kept - {""}:
                await self._del_pod(uid)
            self._kept = set()

    async def _add_pod(self, uid: str, netns_fd: int) -> None:
        from shoal.ztunnel.podsockets import PodSocketFactory
        self._kept = self._kept | {uid}
        if uid in self.proxies:
            return
        fd = os.dup(netns_fd)
        sockets = self.ctx.socket_factory(PodSocketFactory(fd, uid))
        proxy = Proxy(self.shared, sockets, Scope(node=self.options.node, pod_uid=uid),
                      bind="0.0.0.0")
        try:
            await proxy.start()
        except BaseException:
            # The ADD fails: nothing of this pod may stay bound.
            proxy.close_listeners(release=True)
            os.close(fd)
            raise
        self.proxies[uid] = proxy
        self._netns_fds[uid] = fd
        LOG.info("pod enrolled", extra={"fields": {"uid": uid, "worker": self.ctx.worker_id}})

    async def _del_pod(self, uid: str) -> None:
        proxy = self.proxies.pop(uid, None)
        if proxy is None:
            return
        # For good: the shards slot closes its copies too, else the pod's
        # 15001/15006/15008 stay bound in its netns (held by the supervisor).
        proxy.close_listeners(release=True)
        await proxy.close(grace=POD_CLOSE_GRACE)
        fd = self._netns_fds.pop(uid, None)
        if fd is not None:
            os.close(fd)
        LOG.info("pod removed", extra={"fields": {"uid": uid, "worker": self.ctx.worker_id}})


def make_cert_manager(o: ZtunnelOptions, metrics: Any = None) -> CertManager:
    """The CA client (node credential) and the certificate manager, sharing
    the node's certificate store with the other workers (core/identity/store.py)."""
    from shoal.core.identity import CertManager
    from shoal.core.identity.options import make_ca_client
    from shoal.core.identity.store import CertStore
    if not o.ca_credential_dir and not (o.ca_token_file and o.ca_root_cert):
        raise ValueError("--ca-credential (the node credential directory from `shoal controlplane "
                         "issue-node-cert --node NODE --out DIR`) or, on a cluster, --ca-token "
                         "with --ca-root-cert is required")
    ca = make_ca_client(o.ca_address, o.ca_protocol, credential_dir=o.ca_credential_dir,
                        token_file=o.ca_token_file, root_cert=o.ca_root_cert,
                        trust_domain=o.trust_domain)
    return CertManager(ca, node_name=o.node, store=CertStore.inherited(), metrics=metrics)
