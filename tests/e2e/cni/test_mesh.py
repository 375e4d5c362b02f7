"""`shoal mesh up/exec/apply/down` on network namespaces: pods across two
nodes reach each other over the bridge, service names resolve to VIPs,
ambient pods are captured, traffic between ambient pods is encrypted, and
`down` leaves nothing behind."""

import os
import random
import re
import secrets
import select
import shutil
import signal
import time
import subprocess
import sys

import pytest

from tests.helpers.manifests import NAMESPACES, documents, http_deployment, http_service
from tests.helpers.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHOAL = [sys.executable, "-m", "shoal.cli"]

APP = documents(
    NAMESPACES,
    """apiVersion: v1
kind: Pod
metadata: {name: server, namespace: plain, labels: {app: server}}
spec:
  nodeName: node-1
  containers:
  - name: web
    command: [python3, -m, http.server, "8080", --bind, 0.0.0.0]
    ports: [{name: http, containerPort: 8080}]
""",
    http_service("server", "plain"),
    """apiVersion: v1
kind: Pod
metadata: {name: client, namespace: plain}
spec:
  nodeName: node-2
  containers: [{name: c, command: [sleep, infinity]}]
""",
    http_deployment("web", "amb", node="node-1"),
    http_deployment("spread", "amb", replicas=2),
    """apiVersion: v1
kind: Pod
metadata: {name: caller, namespace: amb}
spec:
  serviceAccountName: caller
  nodeName: node-2
  containers: [{name: c, command: [sleep, infinity]}]
""")


def shoal(*args, run_dir, timeout=120, check=True):
    r = subprocess.run([*SHOAL, "mesh", *args, "--run-dir", run_dir] if args[0] != "exec" else
                       [*SHOAL, "mesh", "exec", "--run-dir", run_dir, *args[1:]],
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"shoal mesh {args[0]} failed:\n{r.stdout}\n{r.stderr}")
    return r


def leftovers(mid, pids):
    out = []
    out += [n for n in os.listdir("/run/netns") if n.startswith(f"{mid}-")] if os.path.isdir("/run/netns") else []
    out += [n for n in os.listdir("/sys/class/net") if n.startswith(f"{mid}-")]
    out += [n for n in os.listdir("/etc/netns") if n.startswith(f"{mid}-")] if os.path.isdir("/etc/netns") else []
    for pid in pids:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] != "Z":
                    out.append(f"pid {pid}")
        except (ProcessLookupError, FileNotFoundError):
            pass
    for name in os.listdir("/dev/shm"):
        m = re.match(r"shoal-\w+-(\d+)-", name)
        if m and int(m.group(1)) in pids:
            out.append(f"/dev/shm/{name}")
    return out


@pytest.fixture
def mesh(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.yaml").write_text(APP)
    (app / "hello.txt").write_text("hello from the server pod\n")
    mid = "t" + secrets.token_hex(3)
    # Short: the agents' unix socket paths live under it (AF_UNIX: 107 bytes).
    ctx = {"run_dir": f"/tmp/shoal-mesh-{mid}", "id": mid,
           "base": random.randint(150, 199), "app": str(app)}
    yield ctx
    shoal("down", run_dir=ctx["run_dir"], check=False)
    shutil.rmtree(ctx["run_dir"], ignore_errors=True)


def mesh_pids(run_dir):
    import orjson
    with open(os.path.join(run_dir, "state.json"), "rb") as f:
        st = orjson.loads(f.read())
    pids = [r["pid"] for r in st["procs"].values()]
    pids += [r["pid"] for p in st["pods"].values() for r in p["procs"]]
    # Plus every member of their process groups (workers, watchers, an
    # upgraded ztunnel supervisor): their shm segments are named by pid.
    groups = set(pids)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[2]) in groups:
                        pids.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(set(pids))


def curl(run_dir, pod, url):
    r = shoal("exec", pod, "--", "curl", "-s", "-m", "8", url, run_dir=run_dir, check=False)
    return r.returncode, r.stdout


@pytest.mark.timeout(150)
def test_mesh_network_without_ztunnel_and_down_leaves_nothing(mesh):
    run = mesh["run_dir"]
    shoal("up", "-f", mesh["app"], "--nodes", "2", "--id", mesh["id"], "--cidr-base",
          str(mesh["base"]), "--no-ztunnel", run_dir=run)
    st = shoal("status", "-o", "json", run_dir=run).stdout
    import orjson
    status = orjson.loads(st)
    pods = {p["pod"]: p for p in status["pods"]}
    assert pods["plain/server"]["node"] == "node-1" and pods["plain/client"]["node"] == "node-2"
    assert pods["amb/caller"]["enrolled"] and not pods["plain/client"]["enrolled"]
    assert pods["amb/caller"]["identity"] == "spiffe://cluster.local/ns/amb/sa/caller"
    # Cross-node over the bridge, by pod IP (plain pods: not captured).
    wait_for(lambda: curl(run, "plain/client", f"http://{pods['plain/server']['ip']}:8080/hello.txt")[0] == 0,
             timeout=15, what="server up")
    code, body = curl(run, "plain/client", f"http://{pods['plain/server']['ip']}:8080/hello.txt")
    assert body == "hello from the server pod\n"
    # Service names resolve to the VIP inside pods (short name only in its namespace).
    vip = status["services"]["plain/server"]
    r = shoal("exec", "plain/client", "--", "getent", "hosts", "server.plain.svc.cluster.local",
              run_dir=run)
    assert r.stdout.split()[0] == vip
    assert shoal("exec", "plain/client", "--", "getent", "hosts", "server", run_dir=run).stdout.split()[0] == vip
    assert shoal("exec", "amb/caller", "--", "getent", "hosts", "server", run_dir=run, check=False).returncode != 0
    # The ambient pod's capture is in place (nothing proxies: connection refused).
    ruleset = shoal("exec", "amb/caller", "--", "nft", "list", "table", "inet", "shoal-ambient",
                    run_dir=run).stdout
    assert "redirect to :15001" in ruleset
    assert curl(run, "amb/caller", f"http://{pods['plain/server']['ip']}:8080/")[0] == 7
    # A Deployment without nodeName: one replica per node (the scheduler spreads).
    spread = sorted(p["node"] for k, p in pods.items() if k.startswith("amb/spread-"))
    assert spread == ["node-1", "node-2"]
    # exec into a Deployment by name picks its first replica.
    assert shoal("exec", "amb/web", "--", "true", run_dir=run).returncode == 0
    # scale: a second replica appears on the node the template pins, captured.
    shoal("scale", "amb/web", "--replicas", "2", run_dir=run)
    web = [p for p in orjson.loads(shoal("status", "-o", "json", run_dir=run).stdout)["pods"]
           if p["pod"].startswith("amb/web-")]
    assert len(web) == 2 and web[0]["node"] == web[1]["node"] and all(p["enrolled"] for p in web)
    # Live enrollment: label the plain namespace ambient; its running pods get
    # captured without restarting (same pids), then released again.
    pid_before = mesh_pids(run)
    ns_file = os.path.join(mesh["app"], "ns.yaml")
    with open(ns_file, "w") as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata: {name: plain, labels: "
                "{istio.io/dataplane-mode: ambient}}\n")
    shoal("apply", "-f", ns_file, run_dir=run)

    def enrolled(pod):
        st = orjson.loads(shoal("status", "-o", "json", run_dir=run).stdout)
        return {p["pod"]: p["enrolled"] for p in st["pods"]}[pod]
    wait_for(lambda: enrolled("plain/client") and enrolled("plain/server"), timeout=15,
             what="live enrollment")
    assert "redirect to :15001" in shoal("exec", "plain/client", "--", "nft", "list", "ruleset",
                                         run_dir=run).stdout
    with open(ns_file, "w") as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n")
    shoal("apply", "-f", ns_file, run_dir=run)
    # Each node's agent applies the change on its own: wait for both pods
    # (they sit on different nodes) before using the plain path.
    wait_for(lambda: not enrolled("plain/client") and not enrolled("plain/server"),
             timeout=15, what="release")
    assert curl(run, "plain/client", f"http://{pods['plain/server']['ip']}:8080/hello.txt")[0] == 0
    assert set(pid_before) <= set(mesh_pids(run))      # no app restarted
    pids = mesh_pids(run)
    shoal("down", run_dir=run)
    wait_for(lambda: not leftovers(mesh["id"], pids), timeout=10, what="nothing left")
    assert not os.path.exists(run)


def ztunnel_available():
    try:
        import shoal.ztunnel.app  # noqa: F401
        import shoal.ztunnel.cli  # noqa: F401  (the command the mesh runs)
        return True
    except Exception:
        return False


@pytest.mark.timeout(170)
@pytest.mark.skipif(not ztunnel_available(), reason="ztunnel not importable")
def test_mesh_cross_node_ambient_traffic_is_encrypted(mesh, tmp_path):
    run = mesh["run_dir"]
    shoal("up", "-f", mesh["app"], "--nodes", "2", "--id", mesh["id"], "--cidr-base",
          str(mesh["base"]), run_dir=run, timeout=150)
    marker = "shoal-plaintext-" + secrets.token_hex(6)
    pcap = str(tmp_path / "bridge.pcap")
    dump = subprocess.Popen(["tcpdump", "-i", f"{mesh['id']}-br", "--immediate-mode", "-U", "-s", "0",
                             "-w", pcap, "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # tcpdump says "listening on ..." once the capture is armed.
        ready, _, _ = select.select([dump.stderr], [], [], 15)
        assert ready and b"listening on" in dump.stderr.readline()
        try:
            wait_for(lambda: curl(run, "amb/caller", f"http://web/{marker}")[0] == 0, timeout=30,
                     what="caller -> web through the mesh")
        except AssertionError:
            logs = os.path.join(run, "logs")
            tails = {f: open(os.path.join(logs, f)).read()[-3000:] for f in sorted(os.listdir(logs))
                     if "ztunnel" in f or "agent" in f or "controlplane" in f}
            raise AssertionError("no traffic through the mesh; logs:\n" +
                                 "\n".join(f"--- {k}\n{v}" for k, v in tails.items())) from None
        code, body = curl(run, "amb/caller", f"http://web.amb.svc.cluster.local/{marker}")
        assert code == 0 and "404" in body            # http.server answered (no such file)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
    with open(pcap, "rb") as f:
        captured = f.read()
    assert len(captured) > 1000, "capture saw no traffic on the bridge"
    assert marker.encode() not in captured            # only TLS crossed the bridge
    logs = os.path.join(run, "logs")
    web_log = [f for f in os.listdir(logs) if f.startswith("amb_web-")][0]
    with open(os.path.join(logs, web_log)) as f:
        assert marker in f.read()                     # ...yet the app got the request
    # The spread Deployment: one replica on each node, and the caller's
    # ztunnel balances the service's traffic over both (one of them across
    # the bridge to the other node's ztunnel).
    import orjson
    status = orjson.loads(shoal("status", "-o", "json", run_dir=run).stdout)
    replicas = {p["pod"].split("/", 1)[1]: p["node"] for p in status["pods"]
                if p["pod"].startswith("amb/spread-")}
    assert sorted(replicas.values()) == ["node-1", "node-2"]
    served = set()

    def both_served():
        code, _ = curl(run, "amb/caller", f"http://spread/{marker}")
        assert code == 0, f"caller -> spread failed (curl exit {code})"
        for name in replicas:
            with open(os.path.join(logs, f"amb_{name}_web.log")) as f:
                if marker in f.read():
                    served.add(name)
        return len(served) == 2
    wait_for(both_served, timeout=30, what="requests reaching both spread replicas")


def _ztunnel_pid(run, node):
    import orjson
    with open(os.path.join(run, "state.json"), "rb") as f:
        return orjson.loads(f.read())["procs"][f"ztunnel/{node}"]["pid"]


@pytest.mark.timeout(170)
@pytest.mark.skipif(not ztunnel_available(), reason="ztunnel not importable")
def _start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def test_mesh_ztunnel_upgrade_with_traffic_and_live_policy(mesh, tmp_path):
    run = mesh["run_dir"]
    shoal("up", "-f", mesh["app"], "--nodes", "2", "--id", mesh["id"], "--cidr-base",
          str(mesh["base"]), run_dir=run, timeout=150)
    wait_for(lambda: curl(run, "amb/caller", "http://web/")[0] == 0, timeout=30, what="mesh traffic")
    # SIGUSR2 on the server's node: a new ztunnel (new ZDS instance) takes the
    # pods over from the agent's snapshot while the old one drains.
    os.kill(_ztunnel_pid(run, "node-1"), signal.SIGUSR2)
    codes = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        codes.append(curl(run, "amb/caller", "http://web/")[0])
    agent_log = open(os.path.join(run, "logs", "node-agent-node-1.log")).read()
    assert agent_log.count("ztunnel connected") >= 2, "the upgraded ztunnel never connected"
    assert codes and all(c == 0 for c in codes), f"requests failed during the upgrade: {codes}"
    # The kubelet's standby for that ztunnel is younger than the upgraded
    # supervisor (one loaded before the upgrade would bring the old code back).
    from shoal.cni.mesh.mesh import Mesh
    m = Mesh(run)
    assert m.load()
    upgraded = int(open(os.path.join(m.node_dir("node-1"), "ztunnel.pid")).read())

    def fresh_standby():
        sb = m.status()["standby"].get("ztunnel/node-1") and m.state["standby"]["ztunnel/node-1"]
        return sb and sb["start"] >= _start_ticks(upgraded)
    wait_for(fresh_standby, timeout=40, what="a standby started after the upgrade")
    # Authorization across nodes, applied live: DENY the caller's identity at web.
    policy = tmp_path / "deny.yaml"
    policy.write_text("""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-caller, namespace: amb}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/amb/sa/caller"]}}]}]
""")
    shoal("apply", "-f", str(policy), run_dir=run)
    wait_for(lambda: curl(run, "amb/caller", "http://web/")[0] != 0, timeout=15, what="policy enforced")
    pids = mesh_pids(run)
    shoal("down", run_dir=run)
    wait_for(lambda: not leftovers(mesh["id"], pids), timeout=15, what="nothing left")
