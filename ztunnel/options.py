"""`shoal ztunnel run` options: one validated, frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.core.addr import parse_authority, parse_ip_port
from shoal.core.constants import (CA_PORT, HBONE_PORT, INBOUND_PLAINTEXT_PORT, RESERVED_PORTS,
                            OUTBOUND_CAPTURE_PORT)

DEDICATED = "dedicated"
INPOD = "inpod"

# Where the node agent's ZDS server listens (Istio's INPOD_UDS default).
DEFAULT_ZDS_SOCKET = "/var/run/ztunnel/ztunnel.sock"

OUTBOUND = "outbound"
INBOUND_PLAINTEXT = "inbound-plaintext"


# How long a booting worker waits for the node agent's first snapshot
# (in-pod mode) or the first routing table (dedicated mode), so it re-opens
# the listeners the slot kept (restart, SIGHUP, SIGUSR2) instead of new ones.
# Both come in milliseconds; this only delays a boot while the agent is down
# or the config does not load (the client keeps retrying).
SNAPSHOT_WAIT = 3.0
# How often an open connection's byte counts reach
# istio_tcp_{received,sent}_bytes_total: ztunnel counts as data flows, so a
# scrape (Prometheus' default is every 15 s) sees a long-lived tunnel move,
# not one jump when it closes. Each pass costs two subtractions per connection.
BYTES_REPORT_INTERVAL = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FixedTarget:
    """TEST ONLY: a listener whose connections all have this original destination.

    Real capture needs a REDIRECT rule in a netns (proved by the CNI e2e);
    loopback integration tests instead open one listener per target.
    """
    kind: str                 # OUTBOUND | INBOUND_PLAINTEXT
    port: int                 # listen port (on the proxy's bind address)
    target: tuple[str, int]   # the original destination to assume

    @classmethod
    def parse(cls, spec: str) -> "FixedTarget":
        """`outbound:LISTENPORT=IP:PORT` or `inbound-plaintext:LISTENPORT=IP:PORT`."""
        try:
            kind, rest = spec.split(":", 1)
            lport, target = rest.split("=", 1)
            out = cls(kind=kind, port=int(lport), target=parse_ip_port(target))
        except ValueError as e:
            raise ValueError(f"bad --test-fixed-target {spec!r}: expected "
                             f"outbound:LISTENPORT=IP:PORT ({e})") from None
        if kind not in (OUTBOUND, INBOUND_PLAINTEXT):
            raise ValueError(f"bad --test-fixed-target kind {kind!r}: "
                             f"use {OUTBOUND} or {INBOUND_PLAINTEXT}")
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ZtunnelOptions:
    """Validated options (the fork contract: plain values only).

    Attributes:
        node: the node this proxy serves (its pods get certificates).
        mode: "dedicated" (listeners in this netns) or "inpod" (per pod netns via ZDS).
        ca_address: host:port of the control plane CA.
        ca_credential_dir: where the node credential (node:<name>) is read from.
        ca_token_file / ca_root_cert: on a cluster instead, the projected
            ServiceAccount token (audience istio-ca) and the CA's trust bundle.
        bind: address of the capture listeners in dedicated mode.
        hbone_port / outbound_port / inbound_port: Istio's 15008/15001/15006.
        fixed_targets: TEST ONLY listeners with a fixed original destination.
        snapshot_wait: how long a booting worker waits for its first state:
            in-pod mode the node agent's snapshot, dedicated mode the first
            routing table (the CLI keeps it under half the worker timeout,
            so the wait never looks like a hung worker).
        bytes_report_interval: seconds between byte-count reports of open
            connections.
        service_ports: the supervisor's admin, metrics and readiness ports
            as configured (they may differ from Istio's defaults): refused
            to tunnels like every other port of the proxy.
    """
    node: str
    mode: str = DEDICATED
    ca_address: str = f"127.0.0.1:{CA_PORT}"
    ca_protocol: str = "grpc"
    ca_credential_dir: str | None = None
    ca_token_file: str | None = None
    ca_root_cert: str | None = None
    zds_socket: str = DEFAULT_ZDS_SOCKET
    bind: str = "0.0.0.0"
    hbone_port: int = HBONE_PORT
    outbound_port: int = OUTBOUND_CAPTURE_PORT
    inbound_port: int = INBOUND_PLAINTEXT_PORT
    fixed_targets: tuple[FixedTarget, ...] = ()
    trust_domain: str = "cluster.local"
    snapshot_wait: float = SNAPSHOT_WAIT
    bytes_report_interval: float = BYTES_REPORT_INTERVAL
    service_ports: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if not self.node:
            raise ValueError("--node is required: the name of the node this ztunnel serves")
        if self.mode not in (DEDICATED, INPOD):
            raise ValueError(f"--mode must be {DEDICATED} or {INPOD}, not {self.mode!r}")
        for name in ("hbone_port", "outbound_port", "inbound_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be a TCP port")
        try:
            parse_authority(self.ca_address)
        except ValueError as e:
            raise ValueError(f"--ca-address {self.ca_address!r} must be host:port ({e})") from None
        if self.ca_credential_dir and self.ca_token_file:
            raise ValueError("--ca-credential and --ca-token are exclusive")
        if bool(self.ca_token_file) != bool(self.ca_root_cert):
            raise ValueError("--ca-token needs --ca-root-cert (the CA's trust bundle) and back")
        if not self.bytes_report_interval > 0:
            raise ValueError("--bytes-report-interval must be a positive number of seconds")

    @property
    def proxy_ports(self) -> frozenset[int]:
        return frozenset({self.hbone_port, self.outbound_port, self.inbound_port,
                          *(f.port for f in self.fixed_targets),
                          *(p for p in self.service_ports if p)})

    @property
    def inbound_refused_ports(self) -> frozenset[int]:
        """Ports no inbound tunnel or captured connection may reach: this
        proxy's listeners and every port Istio reserves for its proxies."""
        return self.proxy_ports | RESERVED_PORTS
