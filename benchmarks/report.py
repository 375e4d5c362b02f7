"""Summarise a pytest-benchmark JSON run into a table and a plot.

    python -m shoal.benchmarks.report benchmarks/out

Writes benchmarks/out/summary.md and docs/img/cpu-studies.png; the curated
figures with their context live in docs/benchmarks.md.
"""

from __future__ import annotations

import pathlib
import sys

import orjson


def load(out_dir: pathlib.Path) -> list[dict]:
    data = orjson.loads((out_dir / "results.json").read_bytes())
    return data["benchmarks"]


def table(benches: list[dict]) -> str:
    rows = ["| benchmark | mean | ops/s | rounds |", "|---|---|---|---|"]
    for b in sorted(benches, key=lambda b: b["fullname"]):
        s = b["stats"]
        rows.append(f"| `{b['fullname']}` | {s['mean'] * 1e6:.2f} µs | {s['ops']:,.0f} | {s['rounds']} |")
    return "\n".join(rows) + "\n"


def plot(benches: list[dict], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = sorted(benches, key=lambda b: b["stats"]["mean"])
    names = [b["name"] for b in benches]
    means = [b["stats"]["mean"] * 1e6 for b in benches]
    fig, ax = plt.subplots(figsize=(9, max(3, 0.3 * len(names))))
    ax.barh(names, means)
    ax.set_xscale("log")
    ax.set_xlabel("mean time per call (µs, log scale)")
    ax.set_title("shoal CPU studies (pytest-benchmark)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    out_dir = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out")
    benches = load(out_dir)
    (out_dir / "summary.md").write_text(table(benches))
    plot(benches, pathlib.Path("docs/img/cpu-studies.png"))
    print((out_dir / "summary.md").read_text())


if __name__ == "__main__":
    main()
