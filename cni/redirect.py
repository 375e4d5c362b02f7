"""In-pod traffic redirection: nftables rules and policy routing in a pod netns.

This is Istio's in-pod rule list (istio/istio `cni/pkg/iptables`,
`default.golden`), translated rule for rule to one nftables table so it is
applied atomically: `nft -f` runs the whole script as one transaction, so a
pod is never half-captured. The script first creates-then-deletes the table,
which makes install idempotent (re-install replaces) and removal safe when
the table is already gone (nft 1.0.6 in Debian 12 has no `destroy`).

iptables (Istio)                                   nftables (here)
mangle PRERT  -m mark 0x539/0xfff -j CONNMARK       prerouting-mangle: mark&0xfff==0x539
              --set-xmark 0x111/0xfff                  ct mark set ct mark&~0xfff|0x111
mangle OUTPUT -m connmark 0x111/0xfff -j CONNMARK   output-mangle: ct mark&0xfff==0x111
              --restore-mark (masks 0xffffffff)        meta mark set ct mark
nat PRERT     -s 169.254.7.127 -p tcp -j ACCEPT     prerouting-nat (same order)
nat PRERT     ! -d 127.0.0.1 -p tcp ! --dport 15008
              -m mark ! 0x539/0xfff -j REDIRECT 15006
nat OUTPUT    -d 169.254.7.127 -p tcp -j ACCEPT     output-nat (same order)
              [dns: udp/tcp 53 -> 15053, optional]
              -p tcp -m mark 0x111/0xfff -j ACCEPT
              ! -d 127.0.0.1 -o lo -j ACCEPT
              ! -d 127.0.0.1 -p tcp -m mark ! 0x539/0xfff -j REDIRECT 15001
IPv6 mirrors IPv4 with ::1 and Istio's probe address.

Plus, with pyroute2 (`iptables_linux.go`): `ip rule fwmark 0x111/0xfff pref
32764 lookup 100` and `ip route add local 0.0.0.0/0 dev lo table 100`, so
replies to connections ztunnel opened with a spoofed source come back to it.

Only `install`, `remove` and `check` do I/O: install and remove enter the
pod's netns on the calling thread and apply the table through libnftables
(no process; `nft -f -` if the library is missing) and the routing through
three hand-encoded netlink requests (`cni.netlink`); check reads with nft
and pyroute2. `ruleset()` is pure and unit-tested. They block: call them
from a worker thread, never from a coroutine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
from dataclasses import dataclass

from shoal.cni import netlink
from shoal.core.netns import in_netns, open_netns
from shoal.core.constants import (DNS_PORT, HBONE_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_ROUTE_TABLE,
                            MARK_MASK, OUTBOUND_CAPTURE_PORT, PROXY_MARK, TPROXY_MARK)

TABLE_FAMILY = "inet"
TABLE_NAME = "shoal-ambient"
# Kubelet probes are SNATed to this address on the host (Istio's
# HOST_PROBE_SNAT_IP / _IPV6 defaults) so the pod's rules can exempt them.
PROBE_SNAT_IPV4 = "169.254.7.127"
PROBE_SNAT_IPV6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
# Istio's ip rule preference for the inbound tproxy table.
RULE_PRIORITY = 32764
# nft and nsenter run in well under a second; a stuck one must not hold the
# agent's ADD past the plugin's timeout.
NFT_TIMEOUT_S = 5.0


class RedirectError(Exception):
    """Installing or removing the rules failed; `str()` says what to check."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedirectConfig:
    outbound_port: int = OUTBOUND_CAPTURE_PORT
    inbound_port: int = INBOUND_PLAINTEXT_PORT
    hbone_port: int = HBONE_PORT
    dns_port: int = DNS_PORT
    dns_capture: bool = False      # only when the ztunnel serves DNS on 15053
    proxy_mark: int = PROXY_MARK
    tproxy_mark: int = TPROXY_MARK
    mask: int = MARK_MASK
    route_table: int = INBOUND_ROUTE_TABLE
    ipv6: bool = True

    def __post_init__(self) -> None:
        for name in ("outbound_port", "inbound_port", "hbone_port", "dns_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ValueError(f"{name} must be a TCP port")
        if self.proxy_mark & ~self.mask or self.tproxy_mark & ~self.mask:
            raise ValueError("marks must fit in the mask")


def _h(v: int) -> str:
    return f"0x{v:08x}"


def _family_rules(cfg: RedirectConfig, ip: str, lo: str, probe: str) -> tuple[list[str], list[str]]:
    """(prerouting-nat, output-nat) rules for one address family, in order."""
    mark = f"meta mark & {_h(cfg.mask)}"
    pre = [
        f"{ip} saddr {probe} meta l4proto tcp accept",
        f"{ip} daddr != {lo} tcp dport != {cfg.hbone_port} {mark} != {_h(cfg.proxy_mark)} "
        f"redirect to :{cfg.inbound_port}",
    ]
    out = [f"{ip} daddr {probe} meta l4proto tcp accept"]
    if cfg.dns_capture:
        out += [
            f'meta nfproto {"ipv4" if ip == "ip" else "ipv6"} oifname != "lo" udp dport 53 '
            f"{mark} != {_h(cfg.proxy_mark)} redirect to :{cfg.dns_port}",
            f"{ip} daddr != {lo} tcp dport 53 {mark} != {_h(cfg.proxy_mark)} redirect to :{cfg.dns_port}",
        ]
    out += [
        f"meta nfproto {'ipv4' if ip == 'ip' else 'ipv6'} meta l4proto tcp {mark} == {_h(cfg.tproxy_mark)} accept",
        f'{ip} daddr != {lo} oifname "lo" accept',
        f"{ip} daddr != {lo} meta l4proto tcp {mark} != {_h(cfg.proxy_mark)} "
        f"redirect to :{cfg.outbound_port}",
    ]
    return pre, out


def ruleset(cfg: RedirectConfig = RedirectConfig()) -> str:
    """The nft script that (re)installs the pod's capture table atomically."""
    pre, out = _family_rules(cfg, "ip", "127.0.0.1", PROBE_SNAT_IPV4)
    if cfg.ipv6:
        pre6, out6 = _family_rules(cfg, "ip6", "::1", PROBE_SNAT_IPV6)
        pre, out = pre + pre6, out + out6
    mark = f"meta mark & {_h(cfg.mask)}"
    ct = f"ct mark & {_h(cfg.mask)}"
    t = f"{TABLE_FAMILY} {TABLE_NAME}"
    lines = [
        f"table {t}", f"delete table {t}", f"table {t} {{",
        "  chain prerouting-mangle {",
        "    type filter hook prerouting priority mangle; policy accept;",
        f"    {mark} == {_h(cfg.proxy_mark)} ct mark set ct mark & {_h(~cfg.mask & 0xFFFFFFFF)}"
        f" | {_h(cfg.tproxy_mark)}",
        "  }",
        "  chain output-mangle {",
        "    type route hook output priority mangle; policy accept;",
        f"    {ct} == {_h(cfg.tproxy_mark)} meta mark set ct mark",
        "  }",
        "  chain prerouting-nat {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *(f"    {r}" for r in pre),
        "  }",
        "  chain output-nat {",
        "    type nat hook output priority -100; policy accept;",
        *(f"    {r}" for r in out),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def removal_script() -> str:
    """Deletes the capture table; succeeds when it is already gone."""
    t = f"{TABLE_FAMILY} {TABLE_NAME}"
    return f"table {t}\ndelete table {t}\n"


# --------------------------------------------------------------------------
# I/O

class _LibNft:
    """libnftables (what `nft` itself links) through ctypes: one transaction
    per call, no process. Created inside the pod's netns on the calling
    thread, so its netlink socket talks to that netns. The agent runs one
    pod operation at a time, so one context per call is all the locking."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = (ctypes.c_uint32,)
        for name in ("nft_ctx_buffer_error", "nft_ctx_buffer_output"):
            getattr(lib, name).argtypes = (ctypes.c_void_p,)
        lib.nft_run_cmd_from_buffer.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = (ctypes.c_void_p,)
        lib.nft_ctx_free.argtypes = (ctypes.c_void_p,)
        self.lib = lib

    def run(self, script: str) -> None:
        ctx = self.lib.nft_ctx_new(0)
        if not ctx:
            raise RedirectError("nft_ctx_new failed")
        try:
            self.lib.nft_ctx_buffer_error(ctx)
            self.lib.nft_ctx_buffer_output(ctx)
            if self.lib.nft_run_cmd_from_buffer(ctx, script.encode()) != 0:
                err = (self.lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
                raise RedirectError(err.strip() or "nft transaction failed")
        finally:
            self.lib.nft_ctx_free(ctx)


def _exec_nft(script: str) -> None:
    """`nft -f -` from this thread (the child inherits the thread's netns)."""
    try:
        r = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True,
                           timeout=NFT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RedirectError(f"nft: {e}") from None
    if r.returncode != 0:
        raise RedirectError(r.stderr.decode(errors="replace").strip())


try:
    _nft_apply = _LibNft().run
except OSError:             # no libnftables: the nft binary does the same
    _nft_apply = _exec_nft


def _policy_routing(cfg: RedirectConfig, add: bool) -> None:
    """ip rule + local route (and lo up), in the netns this thread is in."""
    ok = frozenset({errno.EEXIST} if add else {errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL})
    with netlink.open_route_socket() as s:
        if add:
            # REDIRECT from OUTPUT delivers to 127.0.0.1: without lo up every
            # captured connection would hang. Runtimes run the `loopback`
            # plugin, but capture must not depend on it.
            netlink.request(s, netlink.link_up(1))
        netlink.request(s, netlink.fwmark_rule(2, add=add, mark=cfg.tproxy_mark, mask=cfg.mask,
                                               priority=RULE_PRIORITY, table=cfg.route_table), ok)
        netlink.request(s, netlink.local_default_route(3, add=add, table=cfg.route_table), ok)


def _in_pod(netns_path: str, fn) -> None:
    """Run fn on this thread inside the pod's netns; errors as RedirectError."""
    try:
        fd = open_netns(netns_path)
    except OSError as e:
        raise RedirectError(f"pod netns {netns_path}: {e}") from None
    try:
        with in_netns(fd):
            fn()
    except RedirectError as e:
        raise RedirectError(f"in {netns_path}: {e}") from None
    except OSError as e:
        raise RedirectError(f"in {netns_path}: {e}") from None
    finally:
        os.close(fd)


def _iproute(netns_path: str):
    """A pyroute2 IPRoute bound to the pod netns (for `check`, which reads).

    The netlink socket is created on this thread inside the netns (it stays
    bound to it). Not `IPRoute(netns=path)`: that forks a helper and creates
    the namespace when the path is missing, which for a deleted pod would
    conjure an empty netns.
    """
    from pyroute2 import IPRoute
    fd = open_netns(netns_path)
    try:
        with in_netns(fd):
            return IPRoute()
    finally:
        os.close(fd)


def install(netns_path: str, cfg: RedirectConfig = RedirectConfig()) -> None:
    """Capture the pod's traffic. Idempotent. All of it on this thread inside
    the pod's netns: one nft transaction, then three netlink requests.

    Raises:
        RedirectError: the pod is not captured (the caller must fail the ADD).
    """
    def apply() -> None:
        _nft_apply(ruleset(cfg))
        try:
            _policy_routing(cfg, add=True)
        except OSError as e:
            _nft_apply(removal_script())
            raise RedirectError(f"policy routing: {e}") from None
    _in_pod(netns_path, apply)


def remove(netns_path: str, cfg: RedirectConfig = RedirectConfig()) -> None:
    """Release the pod (apps keep running; their new connections go direct)."""
    def release() -> None:
        _nft_apply(removal_script())
        _policy_routing(cfg, add=False)
    _in_pod(netns_path, release)


def check(netns_path: str, cfg: RedirectConfig = RedirectConfig()) -> list[str]:
    """What is missing from the pod's capture (empty when all in place)."""
    missing = []
    r = subprocess.run(["nsenter", f"--net={netns_path}", "nft", "list", "table",
                        TABLE_FAMILY, TABLE_NAME], capture_output=True, timeout=NFT_TIMEOUT_S)
    if r.returncode != 0:
        missing.append(f"nft table {TABLE_FAMILY} {TABLE_NAME}")
    with _iproute(netns_path) as ipr:
        rules = [x for x in ipr.get_rules(family=2)
                 if x.get("priority") == RULE_PRIORITY and x.get("table") == cfg.route_table]
        if not rules:
            missing.append(f"ip rule fwmark {cfg.tproxy_mark:#x}/{cfg.mask:#x} lookup {cfg.route_table}")
        if not list(ipr.get_routes(table=cfg.route_table)):
            missing.append(f"local default route in table {cfg.route_table}")
    return missing
