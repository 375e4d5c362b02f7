"""A real container runtime (podman, CNI backend) on a CNI config directory
that `shoal cni install` manages, with the real node agent and a stand-in
ztunnel: capture of enrolled containers, pass-through of the others (also
while the agent is down), repair of the chain, byte-identical uninstall;
and the plugin binary in a root with nothing but busybox.

podman passes `K8S_POD_NAME` (the container name) and appends the
`CNI_ARGS` of its own environment, which is how each container gets its
`K8S_POD_NAMESPACE` here, as a kubelet's runtime would pass it."""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import orjson
import pytest

from shoal.cni import chain, conflist, protocol
from tests.helpers.cni_agent import PLUGIN, Proc, events, start_agent, start_fake_ztunnel
from tests.helpers.wait import wait_for
from tests.helpers.cni_netns import unique
from tests.helpers.manifests import NAMESPACES

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180),
              pytest.mark.skipif(not shutil.which("podman") or not os.path.exists("/bin/busybox"),
                                 reason="needs podman and busybox-static")]

MESH = NAMESPACES + """---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: optout, namespace: amb, labels: {istio.io/dataplane-mode: none}}
spec: {containers: [{name: c}]}
"""


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


class HostServer:
    """Answers `host` on the bridge gateway: what an uncaptured container reaches."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.sendall(b"host\n")
            c.close()


@pytest.fixture
def node(tmp_path):
    d = {k: str(tmp_path / k) for k in ("run", "cfg", "net.d", "bin")}
    for p in d.values():
        os.makedirs(p)
    with open(os.path.join(d["cfg"], "mesh.yaml"), "w") as f:
        f.write(MESH)
    busybox_rootfs(str(tmp_path / "rootfs"))
    d["rootfs"] = str(tmp_path / "rootfs")
    d["net"], d["br"] = unique("shpm"), unique("shbr")
    octet = random.randint(16, 250)
    d["gw"] = f"10.{octet}.9.1"
    base = chain.conflist(d["net"], bridge=d["br"], subnet=f"10.{octet}.9.0/24", gateway=d["gw"],
                          ipam_dir=str(tmp_path / "ipam"), shoal=False)
    d["conf"] = os.path.join(d["net.d"], "10-bridge.conflist")
    d["base"] = orjson.dumps(base, option=orjson.OPT_INDENT_2)
    with open(d["conf"], "wb") as f:
        f.write(d["base"])
    cc = tmp_path / "containers.conf"
    cc.write_text(f'[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "{d["net.d"]}"\n'
                  f'cni_plugin_dirs = ["/usr/lib/cni", "{d["bin"]}"]\n')
    d["containers.conf"] = str(cc)
    procs = []
    d["procs"] = procs
    try:
        yield d
    finally:
        for p in procs:
            p.stop()
        subprocess.run(["ip", "link", "del", d["br"]], capture_output=True)


def podman(node, namespace, name, script):
    """Run a busybox container `name` (its K8S_POD_NAME) in `namespace` on the network."""
    # PATH without the venv: nothing of shoal's Python is reachable from the plugin.
    env = {**os.environ, "CONTAINERS_CONF": node["containers.conf"],
           "CNI_ARGS": f"K8S_POD_NAMESPACE={namespace}",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(
        ["podman", "--runtime", "runc", "--network-backend", "cni", "--cgroup-manager=cgroupfs",
         "run", "--rm", "--name", name, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
         "--network", node["net"], "--rootfs", node["rootfs"], "/bin/sh", "-c", script],
        capture_output=True, text=True, timeout=90, env=env)


def chained(node):
    with open(node["conf"], "rb") as f:
        return conflist.has_entry("10-bridge.conflist", f.read())


def test_podman_on_an_installed_node(node):
    host = HostServer()
    probe = f"nc -w 2 198.51.100.7 8080 </dev/null; nc -w 2 {node['gw']} {host.port} </dev/null"
    agent = start_agent(node["run"], node["cfg"])
    zt, zev = start_fake_ztunnel(node["run"])
    node["procs"] += [zt]
    installer = Proc([sys.executable, "-m", "shoal.cli", "cni", "install", "--cni-bin-dir", node["bin"],
                      "--cni-conf-dir", node["net.d"], "--agent-run-dir", node["run"]],
                     os.path.join(node["run"], "install.log"))
    node["procs"] += [installer]
    try:
        wait_for(lambda: os.path.exists(os.path.join(node["run"], "chain-ready")), what="installed")
        assert chained(node)
        wait_for(lambda: any(e["type"] == "snapshot" for e in events(zev)), what="ztunnel snapshot")

        # Enrolled (its namespace is ambient): both connections end in the stand-in ztunnel.
        r = podman(node, "amb", "web", probe)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["orig=198.51.100.7:8080", f"orig={node['gw']}:{host.port}"]
        # Not enrolled: a plain namespace, a pod label `none`, kube-system even
        # though labelled ambient. Untouched, they reach the host directly.
        for ns, name in (("plain", "db"), ("amb", "optout"), ("kube-system", "coredns")):
            r = podman(node, ns, name, probe)
            assert r.returncode == 0 and r.stdout.split() == ["host"], (name, r.stdout, r.stderr)
        assert [e["type"] for e in events(zev)][1:] == ["add", "del"]   # only web was handed over
        assert "kube-system" not in open(os.path.join(node["run"], "agent.log")).read()

        # The agent dies: the not-enrolled container still starts; the enrolled one
        # fails with the plugin's error (podman gives up; a kubelet retries).
        agent.stop(signal.SIGKILL)
        for ns, name in (("plain", "db"), ("amb", "optout"), ("kube-system", "coredns")):
            r = podman(node, ns, name, probe)
            assert r.returncode == 0 and r.stdout.split() == ["host"], (name, r.stderr)
        r = podman(node, "amb", "web", probe)
        assert r.returncode != 0
        assert "node agent unreachable; pod in the ambient mesh not started" in r.stderr
        # Back: the enrolled one starts, captured.
        agent = start_agent(node["run"], node["cfg"])
        wait_for(lambda: [e["type"] for e in events(zev)].count("snapshot") >= 2, what="re-snapshot")
        r = podman(node, "amb", "web", probe)
        assert r.returncode == 0 and r.stdout.split()[0] == "orig=198.51.100.7:8080", r.stderr

        # Another writer puts the network config back as it had it: repaired.
        with open(node["conf"], "wb") as f:
            f.write(node["base"])
        wait_for(lambda: chained(node), what="chain repaired")
    finally:
        agent.stop()
    installer.p.send_signal(signal.SIGTERM)
    assert installer.p.wait(10) == 0, installer.output()
    with open(node["conf"], "rb") as f:
        assert f.read() == node["base"]                       # byte-identical to before
    assert os.listdir(node["bin"]) == []


def test_plugin_runs_in_a_root_without_python(node):
    """The static binary in a busybox-only chroot, talking to the agent whose
    socket is inside that root: no Python, no libc of the host needed."""
    # A root of its own under a short path: the agent's socket lives inside
    # it, and pytest's per-worker tmp paths overflow AF_UNIX's 108 bytes.
    root = tempfile.mkdtemp(prefix="shoal-root-")
    busybox_rootfs(root)

    def in_root(env, stdin):
        return subprocess.run(["/shoal-cni"], input=stdin, capture_output=True, env=env, timeout=10,
                              preexec_fn=lambda: (os.chroot(root), os.chdir("/")))
    assert not any(os.path.exists(os.path.join(root, p)) for p in ("usr/bin/python3", "lib", "lib64"))
    shutil.copy(PLUGIN, os.path.join(root, "shoal-cni"))
    run_in = os.path.join(root, "run", "shoal-cni")
    os.makedirs(run_in)
    agent = start_agent(run_in, node["cfg"])
    try:
        stdin = orjson.dumps({"cniVersion": "1.1.0", "name": "n", "type": "shoal-cni",
                              "cni_agent_run_dir": "/run/shoal-cni"})
        r = in_root({"CNI_COMMAND": "STATUS"}, stdin)
        assert (r.returncode, r.stdout) == (0, b""), r.stdout     # the agent answered, through the root
        r = in_root({"CNI_COMMAND": "VERSION"}, b"")
        assert r.returncode == 0 and b'"supportedVersions"' in r.stdout
        agent.stop()
        assert os.path.exists(os.path.join(run_in, protocol.SNAPSHOT_NAME))
        r = in_root({"CNI_COMMAND": "STATUS"}, stdin)
        assert r.returncode == 1 and orjson.loads(r.stdout)["code"] == 50
    finally:
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)
