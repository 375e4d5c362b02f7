"""A real container runtime (podman, CNI backend) calls shoal-cni chained after
bridge + host-local; the container's outbound traffic is captured."""

import os
import random
import shutil
import subprocess

import orjson
import pytest

from shoal.cni import chain
from tests.helpers.cni_agent import CNI_PATH, agent_state, events, start_agent, start_fake_ztunnel
from tests.helpers.wait import wait_for
from tests.helpers.cni_netns import unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120),
              pytest.mark.skipif(not shutil.which("podman") or not os.path.exists("/bin/busybox"),
                                 reason="needs podman and busybox-static")]


def busybox_rootfs(root):
    bindir = os.path.join(root, "bin")
    os.makedirs(bindir)
    for d in ("etc", "proc", "sys", "dev", "tmp"):
        os.makedirs(os.path.join(root, d))
    shutil.copy("/bin/busybox", bindir)
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", os.path.join(bindir, a))


def test_podman_container_is_captured(tmp_path):
    run_dir, cfg, netd = (str(tmp_path / d) for d in ("run", "cfg", "net.d"))
    for d in (run_dir, cfg, netd):
        os.makedirs(d)
    with open(os.path.join(cfg, "ns.yaml"), "w") as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n"
                "  labels: {istio.io/dataplane-mode: ambient}\n")
    rootfs = str(tmp_path / "rootfs")
    busybox_rootfs(rootfs)
    net, br = unique("shpm"), unique("shbr")
    octet = random.randint(16, 250)
    conf = chain.conflist(net, bridge=br, subnet=f"10.{octet}.9.0/24", gateway=f"10.{octet}.9.1",
                          ipam_dir=str(tmp_path / "ipam"), agent_run_dir=run_dir)
    with open(os.path.join(netd, f"{net}.conflist"), "wb") as f:
        f.write(orjson.dumps(conf))
    cc = tmp_path / "containers.conf"
    cc.write_text(f'[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "{netd}"\n'
                  f'cni_plugin_dirs = {orjson.dumps(CNI_PATH.split(":")).decode()}\n')
    agent = start_agent(run_dir, cfg)
    zt, zev = start_fake_ztunnel(run_dir)
    try:
        wait_for(lambda: any(e["type"] == "snapshot" for e in events(zev)), what="snapshot")
        r = subprocess.run(
            ["podman", "--runtime", "runc", "--network-backend", "cni", "--cgroup-manager=cgroupfs",
             "run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
             "--network", net, "--rootfs", rootfs, "/bin/sh", "-c", "nc 198.51.100.7 8080 </dev/null"],
            capture_output=True, text=True, timeout=90, env={**os.environ, "CONTAINERS_CONF": str(cc)})
        assert r.returncode == 0, r.stderr
        # The fake ztunnel's in-pod 15001 listener answered with the original destination.
        assert r.stdout.strip() == "orig=198.51.100.7:8080"
        kinds = [e["type"] for e in events(zev)]
        assert kinds[:3] == ["snapshot", "add", "del"]       # --rm: podman ran DEL
        assert agent_state(run_dir)["pods"] == []
    finally:
        zt.stop()
        agent.stop()
        subprocess.run(["ip", "link", "del", br], capture_output=True)
