"""CNI load study (root): what capture adds to a pod's network setup.

    python -m shoal.benchmarks.load.cni [--pods 20]

Per pod: CNI ADD then DEL through (a) bridge + host-local alone (the peer:
Debian's Go plugins), (b) + shoal-cni for a pod outside the mesh (plugin +
agent round trip), (c) + shoal-cni for an ambient pod (nft transaction,
policy routing, ZDS hand-off to a ztunnel stand-in and its ack). Also the
bare exec cost of `VERSION` for shoal-cni (static C) against bridge (Go).
Writes benchmarks/out/cni.json and docs/img/cni.png. 2 shared cores: noisy.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import time

import orjson

from shoal.cni import chain
from tests.helpers.cni_agent import CNI_PATH, PLUGIN, events, start_agent, start_fake_ztunnel
from tests.helpers.wait import wait_for
from tests.helpers.cni_netns import unique

OUT = pathlib.Path("benchmarks/out")


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def timed_pods(conf, namespace, n):
    adds, dels = [], []
    for i in range(n):
        ns = unique("sbp")
        subprocess.run(["ip", "netns", "add", ns], check=True)
        att = chain.Attachment(container_id=unique("c"), netns=f"/run/netns/{ns}",
                               args={"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": namespace,
                                     "K8S_POD_NAME": f"p{i}"})
        try:
            t0 = time.perf_counter()
            result = chain.add(conf, att, CNI_PATH)
            t1 = time.perf_counter()
            chain.delete(conf, att, CNI_PATH, result)
            t2 = time.perf_counter()
            adds.append((t1 - t0) * 1000)
            dels.append((t2 - t1) * 1000)
        finally:
            subprocess.run(["ip", "netns", "del", ns])
    return {"add_ms_p50": statistics.median(adds), "add_ms_p90": pct(adds, 0.9),
            "del_ms_p50": statistics.median(dels)}


def exec_version(binary, n=20):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([binary], env={"CNI_COMMAND": "VERSION"}, input=b"", capture_output=True)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=20)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="shoal-bench-cni-")
    run_dir, cfg = os.path.join(tmp, "run"), os.path.join(tmp, "cfg")
    os.makedirs(run_dir)
    os.makedirs(cfg)
    with open(os.path.join(cfg, "ns.yaml"), "w") as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: amb\n"
                "  labels: {istio.io/dataplane-mode: ambient}\n")
    br = unique("sbb")
    full = chain.conflist("bench", bridge=br, subnet="10.213.0.0/16", gateway="10.213.0.1",
                          ipam_dir=os.path.join(tmp, "ipam"), agent_run_dir=run_dir)
    peer = {**full, "plugins": full["plugins"][:1]}
    agent = start_agent(run_dir, cfg)
    zt, zev = start_fake_ztunnel(run_dir)
    try:
        wait_for(lambda: any(e["type"] == "snapshot" for e in events(zev)), what="snapshot")
        res = {
            "bridge+host-local": timed_pods(peer, "plain", args.pods),
            "+shoal-cni (not ambient)": timed_pods(full, "plain", args.pods),
            "+shoal-cni (ambient)": timed_pods(full, "amb", args.pods),
            "exec_version_ms": {"bridge (Go)": exec_version("/usr/lib/cni/bridge"),
                                "shoal-cni (C)": exec_version(PLUGIN)},
        }
    finally:
        zt.stop()
        agent.stop()
        subprocess.run(["ip", "link", "del", br], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    base = res["bridge+host-local"]["add_ms_p50"]
    for k in ("+shoal-cni (not ambient)", "+shoal-cni (ambient)"):
        res[k]["add_ratio_vs_peer"] = res[k]["add_ms_p50"] / base
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cni.json").write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode())
    plot(res)


def plot(res) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = ["bridge+host-local", "+shoal-cni (not ambient)", "+shoal-cni (ambient)"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(labels, [res[k]["add_ms_p50"] for k in labels], color=["#888", "#4a90d9", "#d9534f"])
    for i, k in enumerate(labels):
        ax.text(res[k]["add_ms_p50"], i, f" {res[k]['add_ms_p50']:.0f} ms", va="center")
    ax.set_xlabel("CNI ADD latency per pod, median (ms)")
    ax.set_title("What capture adds to pod network setup")
    fig.tight_layout()
    pathlib.Path("docs/img").mkdir(parents=True, exist_ok=True)
    fig.savefig("docs/img/cni.png", dpi=100)


if __name__ == "__main__":
    main()
