"""`shoal mesh demo` (what `make demo` runs): bring the example mesh up and
walk through what ambient mode does, with real commands the user can re-run.

Each step prints the command, its (trimmed) output and a one-line verdict.
The mesh stays up afterwards so the user can explore; `shoal mesh down`
removes it.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from typing import Callable

import orjson

from shoal.cni.mesh import net
from shoal.cni.mesh.mesh import Mesh

# A tour step that waits on the mesh gives up after this long (a fresh mesh
# fetches certificates on first use, ~1 s per identity on 2 cores).
STEP_TIMEOUT_S = 30.0


class Tour:
    def __init__(self, mesh: Mesh, echo: Callable[[str], None], policies_dir: str) -> None:
        self.m = mesh
        self.echo = echo
        self.policies_dir = policies_dir
        self.ok = True

    def _exec(self, pod: str, *argv: str) -> subprocess.CompletedProcess:
        ns = self.m.find_pod(pod)["netns"]
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                              timeout=STEP_TIMEOUT_S)

    def _curl(self, pod: str, url: str) -> tuple[int, str]:
        r = self._exec(pod, "curl", "-s", "-m", "8", "-o", "/dev/stdout", "-w", "\n%{http_code}", url)
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def verdict(self, good: bool, text: str) -> None:
        self.ok &= good
        self.echo(f"  {'✔' if good else '✘'} {text}")

    def step(self, title: str, cmd: str) -> None:
        self.echo(f"\n== {title}\n  $ {cmd}")

    def cross_node(self) -> None:
        self.step("A page view crosses services, namespaces and nodes",
                  "shoal mesh exec bookinfo/sleep -- curl -s http://productpage:9080/")
        deadline = time.monotonic() + STEP_TIMEOUT_S
        code, body = 0, ""
        while time.monotonic() < deadline and code != 200:
            code, body = self._curl("bookinfo/sleep", "http://productpage:9080/")
        served = []
        try:
            def walk(node):
                served.append(f"{node.get('service')}@{node.get('pod_name')}")
                for c in node.get("calls", []):
                    walk(c)
            walk(orjson.loads(body))
        except (ValueError, AttributeError):
            pass
        nodes: dict[str, str] = {p["pod"].split("/")[1]: p["node"] for p in self.m.status()["pods"]}
        for s in served:
            pod = s.split("@")[1]
            self.echo(f"    {s:<60} on {nodes.get(pod, '?')}")
        # The claim is checked, not assumed: the hops must really span nodes
        # (examples/bookinfo pins sleep and productpage to different nodes).
        hop_pods = [s.split("@")[1] for s in served] + ["sleep"]
        hop_nodes = {nodes[pod] for pod in hop_pods if nodes.get(pod) is not None}
        self.verdict(code == 200 and len(served) >= 4 and len(hop_nodes) >= 2,
                     f"HTTP {code}; {len(served)} services answered on "
                     f"{len(hop_nodes)} nodes ({', '.join(sorted(hop_nodes))})")

    def _cross_node_pair(self) -> tuple[str, str]:
        """A client pod and a service whose pods all run on other nodes."""
        pods = self.m.status()["pods"]
        node_of = {p["pod"]: p["node"] for p in pods}
        for client in ("bookinfo/sleep", "bookinfo/notsleep"):
            for svc, url in (("productpage", "productpage:9080"), ("details", "details:9080"),
                             ("reviews", "reviews:9080"), ("ratings", "ratings.ratings:9080")):
                ends = [n for k, n in node_of.items() if k.split("/", 1)[1].startswith(svc + "-")]
                if ends and node_of.get(client) not in ends:
                    return client, url
        return "bookinfo/sleep", "productpage:9080"

    def encrypted(self) -> None:
        br = net.bridge_name(self.m.mid)
        marker = "demo-" + secrets.token_hex(4)
        client, target = self._cross_node_pair()
        self.step("Between nodes only mutual TLS crosses the wire (HBONE on 15008)",
                  f"tcpdump -i {br} tcp   # while {client}: curl http://{target}/?q={marker}")
        pcap = self.m.p("demo.pcap")
        # --immediate-mode: hand packets over at once, not per buffer timeout.
        dump = subprocess.Popen(["tcpdump", "-i", br, "--immediate-mode", "-U", "-s", "0",
                                 "-w", pcap, "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert dump.stderr is not None   # stderr=PIPE
        try:
            # tcpdump says "listening on ..." once the capture is armed.
            select.select([dump.stderr], [], [], STEP_TIMEOUT_S)
            dump.stderr.readline()
            code, _ = self._curl(client, f"http://{target}/?q={marker}")
            time.sleep(0.5)
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(10)
        r = subprocess.run(["tcpdump", "-nr", pcap], capture_output=True, text=True)
        lines = r.stdout.splitlines()
        hbone = sum(1 for ln in lines if ".15008" in ln)
        with open(pcap, "rb") as f:
            plaintext = marker.encode() in f.read()
        os.unlink(pcap)
        self.echo(f"    {len(lines)} packets on the bridge, {hbone} to or from port 15008")
        self.verdict(code == 200 and not plaintext and hbone > 0,
                     "the request text never appears on the bridge" if not plaintext
                     else "PLAINTEXT seen on the bridge")

    def policy(self) -> None:
        path = os.path.join(self.policies_dir, "deny-notsleep.yaml")
        before = {p: self._curl(f"bookinfo/{p}", "http://productpage:9080/")[0] for p in ("sleep", "notsleep")}
        self.step("A DENY policy applied live blocks one client, not the other",
                  f"shoal mesh apply -f {path}")
        self.m.apply([path], lambda s: None)
        deadline = time.monotonic() + STEP_TIMEOUT_S
        after = before
        while time.monotonic() < deadline:
            after = {p: self._curl(f"bookinfo/{p}", "http://productpage:9080/")[0]
                     for p in ("sleep", "notsleep")}
            if after["notsleep"] != 200:
                break
            time.sleep(0.5)
        for p in ("sleep", "notsleep"):
            self.echo(f"    {p:<9} before: {before[p] or 'refused'}   after: {after[p] or 'reset'}")
        self.verdict(after["sleep"] == 200 and after["notsleep"] != 200,
                     "notsleep's identity is denied by productpage's ztunnel; sleep still gets in")

    def access_log(self) -> None:
        node = self.m.find_pod("bookinfo/productpage-v1")["node"]
        path = self.m.p("logs", f"ztunnel-{node}.log")
        self.step(f"ztunnel's access log on {node}: one line per connection",
                  f"grep 'connection complete' {path} | tail -1")
        line = ""
        try:
            with open(path, errors="replace") as f:
                for ln in f:
                    if "connection complete" in ln and "productpage" in ln:
                        line = ln.strip()
        except OSError as e:
            self.verdict(False, f"cannot read {path}: {e}")
            return
        # ztunnel's text format (LOG_FORMAT=json gives the same fields as JSON).
        fields = _access_fields(line)
        self.echo(f"    {line}")
        self.verdict(bool(fields.get("src.identity")) and bool(fields.get("dst.service")),
                     "the inbound connection to productpage is logged with its source identity "
                     "and destination service")

    def workloads_table(self) -> None:
        node = self.m.find_pod("bookinfo/productpage-v1")["node"]
        ns = net.node_netns(self.m.mid, self.m.node_index(node))
        self.step(f"What the ztunnel on {node} knows (istioctl's layout)",
                  f"ip netns exec {ns} shoal ztunnel-config workloads -n bookinfo")
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "shoal.cli",
                            "ztunnel-config", "workloads", "-n", "bookinfo"],
                           capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
        for ln in r.stdout.splitlines():
            self.echo(f"    {ln}")
        self.verdict(r.returncode == 0 and "productpage" in r.stdout,
                     "workloads, nodes, waypoints and protocols as `istioctl ztunnel-config`")

    def metrics(self) -> None:
        node = self.m.find_pod("bookinfo/productpage-v1")["node"]
        ns = net.node_netns(self.m.mid, self.m.node_index(node))
        self.step(f"ztunnel's Prometheus metrics on {node}",
                  f"ip netns exec {ns} curl -s http://127.0.0.1:15020/metrics")
        r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-m", "5",
                            "http://127.0.0.1:15020/metrics"], capture_output=True, text=True)
        tcp = [ln for ln in r.stdout.splitlines()
               if ln.startswith(("istio_tcp_connections_opened_total", "istio_tcp_sent_bytes_total"))]
        wanted = [ln for ln in tcp if "productpage" in ln] or tcp
        # One line per reporter: the destination side names the service too
        # (ztunnel guesses it from the workload's target port).
        shown = [next((ln for ln in wanted if f'reporter="{r}"' in ln), "")
                 for r in ("source", "destination")]
        for ln in filter(None, shown):
            # Whole lines: the source labels come late in the label set.
            self.echo(f"    {ln}")
        dest = shown[1]
        self.verdict(all(shown) and 'destination_service="productpage.bookinfo.' in dest,
                     "Istio's TCP metrics count the traffic, reported by both ztunnels "
                     "with the destination service")


def _access_fields(line: str) -> dict:
    """The fields of one access-log line, text (ztunnel's) or JSON."""
    if line.startswith("{"):
        try:
            return orjson.loads(line)
        except ValueError:
            return {}
    out = {}
    for m in re.finditer(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S+)', line.rpartition("\t")[2]):
        out[m.group(1)] = m.group(2).strip('"')
    return out


def run(mesh: Mesh, echo: Callable[[str], None], policies_dir: str) -> bool:
    tour = Tour(mesh, echo, policies_dir)
    for step in (tour.cross_node, tour.encrypted, tour.access_log, tour.workloads_table,
                 tour.policy, tour.metrics):
        try:
            step()
        except Exception as e:  # noqa: BLE001 - a tour step failing must not hide the rest
            tour.verdict(False, f"step failed: {e}")
    return tour.ok
