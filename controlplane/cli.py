"""`shoal controlplane`: run the CA, issue node credentials, rotate the root."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import click

from shoal.core import log
from shoal.core.constants import CA_PORT, DEFAULT_TRUST_DOMAIN

# How often the running CA checks its files for a rotation or new cacerts.
STATE_POLL_INTERVAL = 2.0
# The mesh config (node -> pods) is re-read when routing's DirectorySource
# reports a change (inotify; a root that does not exist yet, or a machine
# without inotify, is polled as the config watcher polls it), parsed in a
# thread, never by a certificate request. With no change, a re-check this
# often anyway: the safety net for an event the kernel dropped (a full
# inotify queue). An idle CA otherwise sleeps; it used to wake 4 times a
# second to stat every file.
CONFIG_RECHECK_INTERVAL = 10.0


async def _watch_config(nodes) -> None:
    """Refresh `nodes` (a background ConfigIdentities) whenever its source
    may have changed, until cancelled."""
    from shoal.routing.watcher import Wakeup
    wakeup = Wakeup()
    loop = asyncio.get_running_loop()
    try:
        while True:
            wait = loop.run_in_executor(None, nodes.source.wait, CONFIG_RECHECK_INTERVAL,
                                        wakeup.rfd)
            try:
                changed = await asyncio.shield(wait)
            except asyncio.CancelledError:
                # The thread holds the wake fd: wake it, and let it return
                # before the pipe is closed.
                wakeup.set()
                await asyncio.wait({wait})
                raise
            await asyncio.to_thread(nodes.refresh, changed=changed)
    finally:
        wakeup.close()


# The ztunnel DaemonSet's account in deploy/ (namespace shoal-system).
DEFAULT_NODE_ACCOUNT = "shoal-system/shoal-ztunnel"
# The CA serves once the pods are listed; a cluster's first list may take a while.
KUBE_SYNC_TIMEOUT = 120.0

_DURATION = re.compile(r"^(\d+)(s|m|h|d)?$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> dt.timedelta:
    """"24h", "90m", "3600s", "2d" or plain seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 24h, 90m, 3600s)")
    return dt.timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)])


def _ttl_option(ctx, param, value):
    return None if value is None else parse_duration(value)


@click.group()
def controlplane() -> None:
    """The control plane: a SPIFFE CA on port 15012 (mutual TLS)."""


@controlplane.command()
@click.option("--port", default=CA_PORT, show_default=True, type=int, help="CA port (0: any free port).")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--state-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the CA keeps its root (created on first start).")
@click.option("--config", "config_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Mesh config directory: which pods run on which node.")
@click.option("--overlay", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory of Pods with IPs/nodes for Deployment replicas (as `shoal config`).")
@click.option("--cacerts", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Plug-in CA (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).")
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True)
@click.option("--cert-ttl", default="24h", show_default=True, callback=_ttl_option,
              help="Default workload certificate lifetime.")
@click.option("--port-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the bound port here once listening (for --port 0).")
@click.option("--log-level", default=None)
@click.option("--kubernetes-api", is_flag=True, default=False,
              help="On a cluster: pods from the Kubernetes API (in-cluster account, else "
              "$KUBECONFIG), callers authenticated by ServiceAccount token (TokenReview).")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="As --kubernetes-api, with this kubeconfig.")
@click.option("--trusted-node-account", "trusted_nodes", multiple=True,
              default=(DEFAULT_NODE_ACCOUNT,), show_default=True,
              help="<namespace>/<serviceaccount> of the node proxies (may impersonate the "
              "pods of their node; Istio's CA_TRUSTED_NODE_ACCOUNTS).")
@click.option("--root-secret", default=None, metavar="NAMESPACE/NAME",
              help="Keep the self-signed root in this Secret (created on first start).")
@click.option("--root-configmap", "root_configmaps", multiple=True, metavar="NAMESPACE/NAME",
              help="Publish the trust bundle (root-cert.pem) in this ConfigMap (repeatable: "
              "one per namespace whose proxies authenticate by token, as istio-ca-root-cert).")
def run(port, host, state_dir, config_dir, overlay, cacerts, trust_domain, cert_ttl, port_file,
        log_level, kubernetes_api, kubeconfig, trusted_nodes, root_secret, root_configmaps) -> None:
    """Serve certificate requests from node proxies and waypoints."""
    from shoal.controlplane.authority import MAX_CERT_TTL, MIN_CERT_TTL
    log.setup(log_level)
    if not MIN_CERT_TTL <= cert_ttl <= MAX_CERT_TTL:
        raise click.BadParameter(f"must be between {MIN_CERT_TTL} and {MAX_CERT_TTL}", param_hint="--cert-ttl")
    kube = KubeOptions(kubeconfig=kubeconfig, trusted_nodes=tuple(trusted_nodes),
                       root_secret=_ref(root_secret, "--root-secret"),
                       root_configmaps=tuple(ref for c in root_configmaps
                                             if (ref := _ref(c, "--root-configmap")) is not None)) \
        if (kubernetes_api or kubeconfig) else None
    if kube is None and (root_secret or root_configmaps):
        raise click.UsageError("--root-secret and --root-configmap need --kubernetes-api or --kubeconfig")
    if kube is not None and config_dir:
        raise click.UsageError("--config and --kubernetes-api/--kubeconfig are exclusive")
    asyncio.run(_serve(port, host, state_dir, config_dir, overlay, cacerts, trust_domain, cert_ttl,
                       port_file, kube))



@dataclass(frozen=True)
class KubeOptions:
    kubeconfig: str | None
    trusted_nodes: tuple[str, ...]
    root_secret: tuple[str, str] | None
    root_configmaps: tuple[tuple[str, str], ...]


def _ref(value: str | None, flag: str) -> tuple[str, str] | None:
    if value is None:
        return None
    ns, sep, name = value.partition("/")
    if not sep or not ns or not name:
        raise click.BadParameter("use <namespace>/<name>", param_hint=flag)
    return ns, name


async def _kube_setup(kube: KubeOptions, state_dir: Path, cacerts, trust_domain: str, logger):
    """Pods from the API, token authentication, and the root kept in a Secret."""
    from shoal.controlplane import secretstore, store
    from shoal.controlplane.kubepods import KubePods
    from shoal.controlplane.tokenauth import TokenReviewer, authenticate_token
    from shoal.routing.kube.kinds import POD
    from shoal.routing.kube.source import KubeSource, make_client
    client = make_client(kube.kubeconfig)
    restored = False
    if kube.root_secret and not store.cacerts_dir(state_dir, cacerts):
        restored = await secretstore.restore_root(client, *kube.root_secret, state_dir)
    ca = store.load_or_create(state_dir, trust_domain=trust_domain, cacerts=cacerts)
    if kube.root_secret and not restored and not store.cacerts_dir(state_dir, cacerts):
        if not await secretstore.save_root(client, *kube.root_secret, state_dir):
            await secretstore.restore_root(client, *kube.root_secret, state_dir)
            ca = store.load_or_create(state_dir, trust_domain=trust_domain, cacerts=cacerts)
        logger.info("CA root saved in a Secret", extra={"fields": {
            "secret": "/".join(kube.root_secret)}})
    for ns, name in kube.root_configmaps:
        await secretstore.publish_roots(client, ns, name, "".join(ca.trust_bundle_pem))
    source = KubeSource(kube.kubeconfig, kinds=(POD,)).start()
    if not await asyncio.to_thread(source.wait_synced, KUBE_SYNC_TIMEOUT):
        logger.warning("pods not listed yet; serving, node proxies may be refused until then",
                       extra={"fields": {"kubernetes": source.health()}})
    pods = KubePods(source, trust_domain)
    reviewer = TokenReviewer(client)

    async def token_auth(header: str):
        return await authenticate_token(header, reviewer, trusted_nodes=kube.trusted_nodes,
                                        node_of_pod=pods.node_of_pod, trust_domain=trust_domain)
    return ca, pods, token_auth, source, client


async def _serve(port, host, state_dir, config_dir, overlay, cacerts, trust_domain, cert_ttl,
                 port_file, kube: "KubeOptions | None" = None) -> None:
    from shoal.controlplane import store
    from shoal.controlplane.nodeauth import ConfigIdentities
    from shoal.controlplane.server import CaServer
    logger = log.get("ca")
    token_auth = source = client = None
    if kube is not None:
        ca, nodes, token_auth, source, client = await _kube_setup(kube, state_dir, cacerts,
                                                                   trust_domain, logger)
    else:
        ca = store.load_or_create(state_dir, trust_domain=trust_domain, cacerts=cacerts)
        if config_dir:
            # Parsed here and in the poll loop below, never in a request.
            nodes = ConfigIdentities(config_dir, overlay=overlay, trust_domain=trust_domain,
                                     background=True)
            await asyncio.to_thread(nodes.refresh)
            config_watch = asyncio.create_task(_watch_config(nodes))  # noqa: F841 (held: an unreferenced task may be collected)
        else:
            logger.warning("no --config: node proxies can obtain no workload certificate")
            nodes = lambda node: set()  # noqa: E731
    server = CaServer(ca, nodes, default_ttl=cert_ttl, token_auth=token_auth)
    bound = await server.start(host, port)
    if port_file:
        tmp = Path(str(port_file) + ".tmp")
        tmp.write_text(str(bound))
        os.replace(tmp, port_file)
    logger.info("control plane CA listening", extra={"fields": {
        "port": bound, "trust_domain": trust_domain, "roots": len(ca.roots),
        "mode": "cacerts" if store.cacerts_dir(state_dir, cacerts) else "self-signed"}})
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    stamp = store.state_stamp(state_dir, cacerts)
    while not stop.is_set():
        try:
            async with asyncio.timeout(STATE_POLL_INTERVAL):
                await _either(stop, reload)
        except TimeoutError:
            pass
        new_stamp = store.state_stamp(state_dir, cacerts)
        if reload.is_set() or new_stamp != stamp:
            reload.clear()
            stamp = new_stamp
            try:
                server.reload_ca(store.load_or_create(state_dir, trust_domain=trust_domain, cacerts=cacerts))
                logger.info("CA reloaded", extra={"fields": {"roots": len(server.ca.roots)}})
                for ns, name in kube.root_configmaps if kube is not None else ():
                    from shoal.controlplane import secretstore
                    await secretstore.publish_roots(client, ns, name,
                                                    "".join(server.ca.trust_bundle_pem))
            except Exception as e:  # keep serving with the last good CA
                logger.error("CA reload failed; keeping the previous CA",
                             extra={"fields": {"error": str(e)}})
    await server.close()
    if source is not None:
        source.close()
    if client is not None:
        await client.close()


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    tasks = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


@controlplane.command("issue-node-cert")
@click.option("--state-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--cacerts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--node", help="Node name: a ztunnel credential for this node.")
@click.option("--waypoint", help="<namespace>/<name>: a credential shared by a waypoint's replicas.")
@click.option("--service-account", default=None,
              help="Waypoint service account (default: the waypoint name, as Istio).")
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def issue_node_cert(state_dir, cacerts, node, waypoint, service_account, trust_domain, out) -> None:
    """Write a node (or waypoint) credential: cert-chain.pem, key.pem, root-cert.pem."""
    from shoal.controlplane import store
    from shoal.controlplane.authority import (NODE_CN_PREFIX, SYSTEM_NAMESPACE, WAYPOINT_CN_PREFIX,
                                   ZTUNNEL_SERVICE_ACCOUNT)
    from shoal.core.identity.spiffe import Identity
    if bool(node) == bool(waypoint):
        raise click.UsageError("give exactly one of --node or --waypoint")
    if node:
        ident = Identity(trust_domain=trust_domain, namespace=SYSTEM_NAMESPACE,
                         service_account=ZTUNNEL_SERVICE_ACCOUNT)
        cn = NODE_CN_PREFIX + node
    else:
        ns, sep, name = waypoint.partition("/")
        if not sep or not ns or not name:
            raise click.BadParameter("use <namespace>/<name>", param_hint="--waypoint")
        ident = Identity(trust_domain=trust_domain, namespace=ns, service_account=service_account or name)
        cn = WAYPOINT_CN_PREFIX + waypoint
    ca = store.load_or_create(state_dir, trust_domain=trust_domain, cacerts=cacerts)
    key, signed = ca.issue_credential(ident, cn)
    write_credential(out, key, signed.cert_chain, signed.trust_bundle)
    click.echo(f"wrote {out}/cert-chain.pem, key.pem, root-cert.pem for {cn} ({ident.uri}), "
               f"serial {signed.serial}, valid until {signed.not_after.isoformat()}")


def write_credential(out: Path, key, cert_chain, trust_bundle) -> None:
    from cryptography.hazmat.primitives import serialization
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    (out / "cert-chain.pem").write_text("".join(cert_chain))
    (out / "root-cert.pem").write_text("".join(trust_bundle))


@controlplane.command("rotate-root")
@click.option("--state-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--phase", required=True, type=click.Choice(["add", "activate", "retire"]),
              help="add: trust a new root; activate: sign with it; retire: drop old roots.")
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True)
def rotate_root(state_dir, phase, trust_domain) -> None:
    """Rotate a self-signed root in three overlapping phases (running CAs reload)."""
    from shoal.controlplane import store
    from shoal.controlplane.authority import SigningError
    try:
        click.echo(store.rotate_root(state_dir, phase, trust_domain=trust_domain))
    except SigningError as e:
        raise click.ClickException(str(e)) from e
