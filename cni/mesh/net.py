"""The local mesh's network: nodes as netns on a host bridge, pods via CNI.

    host netns:   <id>-br  (10.BASE.0.1/24)
                   ├─ <id>-cp  ─ netns <id>-cp      eth0 10.BASE.0.2   (control plane)
                   ├─ <id>-n1  ─ netns <id>-node-1  eth0 10.BASE.0.11, cni0 10.BASE.1.1/24
                   └─ <id>-n2  ─ netns <id>-node-2  eth0 10.BASE.0.12, cni0 10.BASE.2.1/24
    node i routes 10.BASE.j.0/24 via 10.BASE.0.(10+j); pods hang off cni0,
    wired by the real bridge + host-local plugins run inside the node netns,
    then shoal-cni (exactly a runtime's CNI ADD).

Everything is named after the mesh id, so `down` removes exactly what `up`
made, and two meshes (or tests) with different ids and bases never meet.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from shoal.cni.mesh import plan

# `ip`/`sysctl` calls are instant; bound them so a wedged kernel call shows
# up as an error rather than a hung `mesh up`.
CMD_TIMEOUT_S = 15.0
NETNS_DIR = "/run/netns"
ETC_NETNS = "/etc/netns"


class MeshError(Exception):
    """An operator-facing failure (the message says what to do)."""


def sh(*args: str, check: bool = True) -> str:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MeshError(f"{' '.join(args)}: {e}") from None
    if check and r.returncode != 0:
        raise MeshError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def bridge_name(mid: str) -> str:
    return f"{mid}-br"


def node_netns(mid: str, i: int) -> str:
    return f"{mid}-node-{i}"


def cp_netns(mid: str) -> str:
    return f"{mid}-cp"


def pod_netns(mid: str, namespace: str, name: str) -> str:
    return f"{mid}-{namespace}-{name}"


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def _veth_into(mid: str, host_side: str, ns: str, ip: str) -> None:
    peer = f"{host_side}p"
    sh("ip", "link", "add", host_side, "type", "veth", "peer", "name", peer)
    sh("ip", "link", "set", peer, "netns", ns)
    sh("ip", "-n", ns, "link", "set", peer, "name", "eth0")
    sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "set", host_side, "master", bridge_name(mid))
    sh("ip", "link", "set", host_side, "up")


def create_fabric(mid: str, base: int, nodes: int) -> None:
    """Host bridge, control-plane netns and node netns with routes."""
    if not 1 <= nodes <= plan.MAX_NODES:
        raise MeshError(f"--nodes must be 1..{plan.MAX_NODES}")
    br = bridge_name(mid)
    if os.path.exists(f"/sys/class/net/{br}"):
        raise MeshError(f"bridge {br} exists: a mesh with id {mid!r} is up "
                        "(`shoal mesh down`, or choose another --id)")
    sh("ip", "link", "add", br, "type", "bridge")
    sh("ip", "addr", "add", f"{plan.host_ip(base)}/24", "dev", br)
    sh("ip", "link", "set", br, "up")
    sh("ip", "netns", "add", cp_netns(mid))
    _veth_into(mid, f"{mid}-cp", cp_netns(mid), plan.controlplane_ip(base))
    for j in range(1, nodes + 1):
        # Waypoint pods fetch certificates from the CA: replies must route back.
        sh("ip", "-n", cp_netns(mid), "route", "add", plan.pod_subnet(base, j),
           "via", plan.node_ip(base, j))
    for i in range(1, nodes + 1):
        ns = node_netns(mid, i)
        sh("ip", "netns", "add", ns)
        _veth_into(mid, f"{mid}-n{i}", ns, plan.node_ip(base, i))
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for j in range(1, nodes + 1):
            if j != i:
                sh("ip", "-n", ns, "route", "add", plan.pod_subnet(base, j),
                   "via", plan.node_ip(base, j))


def destroy_fabric(mid: str, nodes: int) -> list[str]:
    """Remove nodes, control plane and bridge; returns what failed (best effort)."""
    errors = []
    for ns in [node_netns(mid, i) for i in range(1, nodes + 1)] + [cp_netns(mid)]:
        if exists(ns):
            try:
                sh("ip", "netns", "del", ns)
            except MeshError as e:
                errors.append(str(e))
    for link in [bridge_name(mid)] + [f"{mid}-n{i}" for i in range(1, nodes + 1)] + [f"{mid}-cp"]:
        if os.path.exists(f"/sys/class/net/{link}"):
            try:
                sh("ip", "link", "del", link)
            except MeshError as e:
                errors.append(str(e))
    return errors


def write_pod_etc(netns: str, hosts: str, resolv: str) -> None:
    """/etc/netns/<netns>/{hosts,resolv.conf}: `ip netns exec` bind-mounts
    them over /etc for every process of the pod. Written in place, so a
    running process sees updates (the bind mount pins the inode)."""
    d = os.path.join(ETC_NETNS, netns)
    os.makedirs(d, exist_ok=True)
    for name, text in (("hosts", hosts), ("resolv.conf", resolv)):
        _write_in_place(os.path.join(d, name), text.encode())


def _write_in_place(path: str, data: bytes) -> None:
    """Update `path` keeping its inode, never leaving it empty: a pod's
    resolver reading it mid-update (every `apply`/`scale` rewrites every
    pod's hosts) would otherwise fail a lookup. Unchanged files are not
    touched; new content is written over the old, then the tail cut."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def remove_pod_etc(netns: str) -> None:
    shutil.rmtree(os.path.join(ETC_NETNS, netns), ignore_errors=True)
