"""Load run: the cost of each hostile-peer attack on one HBONE server worker.

    flock /tmp/shoal-netns.lock python -m shoal.benchmarks.load.attacks [--out FILE]

One `tests.helpers.hbone_tools exit` process (one worker, uvloop, as a shoal
worker) on loopback; for each attack of docs/security.md the attacker (a
valid client certificate, raw HTTP/2 frames over TLS 1.3, tests/helpers/
h2attack.py) runs while an honest client opens a new HBONE connection and
CONNECT every 50 ms. Reported per attack: how the attacker's connection
ended, the server's RSS and fd growth, the server's CPU seconds during the
attack, upstream connections it caused, honest CONNECTs ok/failed. Then the
costs before authentication (silent TCP connections, partial and whole
ClientHellos), and the two user-input attacks measured in-process: an
HTTPRoute regex against Python's `re` (the engine before) and a YAML alias
bomb through the config loader. Writes JSON to benchmarks/out/attacks.json
and prints a Markdown table (docs/security.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers import h2attack as atk  # noqa: E402
from tests.helpers.hbone_net import CLIENT_ID, SERVER_ID  # noqa: E402
from tests.helpers.hbone_procs import start_shoal_tool, stop  # noqa: E402
from tests.helpers.pki import TestPKI, write_pem  # noqa: E402

CODES = {atk.ENHANCE_YOUR_CALM: "GOAWAY ENHANCE_YOUR_CALM", 0: "GOAWAY NO_ERROR"}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


class Rig:
    def __init__(self, tmp: Path) -> None:
        pki = TestPKI()
        server, self.client = pki.issue(SERVER_ID), pki.issue(CLIENT_ID)
        sf, cf = write_pem(server, tmp, "server"), write_pem(self.client, tmp, "client")
        self.victim, self.honest_echo = atk.CountingEcho(), atk.CountingEcho()
        self.proc, self.port = start_shoal_tool(
            ["exit", "--listen", "127.0.0.1:0", "--cert", str(sf.cert), "--key", str(sf.key),
             "--ca", str(sf.ca), "--max-pending-handshakes", "5000"], tmp / "exit.log")
        self.ctx = atk.tls_context(str(cf.cert), str(cf.key), str(cf.ca))
        self.authority = f"127.0.0.1:{self.victim.port}"

    def honest(self) -> atk.HonestClient:
        return atk.HonestClient(port=self.port, client_cert=self.client, server_id=SERVER_ID,
                                authority=f"127.0.0.1:{self.honest_echo.port}")

    def close(self) -> None:
        stop(self.proc)
        self.victim.close()
        self.honest_echo.close()


def measure(rig: Rig, name: str, run) -> dict:
    honest = rig.honest().start()
    upstream0 = rig.victim.accepted
    before = atk.usage(rig.proc.pid)
    t0 = time.monotonic()
    a = atk.Attack(rig.port, rig.ctx)
    run(a)
    closed = a.wait_closed(15)
    took = time.monotonic() - t0
    peak = atk.usage(rig.proc.pid)
    a.close()
    honest.stop()
    code = a.goaway()
    refused = len(atk.refused(a))
    return {"attack": name, "ended": CODES.get(code, f"code {code}") if code is not None
            else ("closed" if closed else f"open ({refused} REFUSED_STREAM)"),
            "seconds": round(took, 3), "rss_kib": peak.rss_kib - before.rss_kib,
            "fds": peak.fds - before.fds, "cpu_s": round(peak.cpu_s - before.cpu_s, 3),
            "upstream_connections": rig.victim.accepted - upstream0,
            "honest_ok": honest.ok, "honest_failed": len(honest.failed)}


def pre_handshake(rig: Rig, name: str, n: int, first: bytes) -> dict:
    honest = rig.honest().start()
    before = atk.usage(rig.proc.pid)
    socks = atk.silent_connections(rig.port, n, first)
    after = atk.wait_usage(rig.proc.pid, lambda u: u.fds >= before.fds + n, 20)
    time.sleep(1.0)                         # the server's TLS work for whole ClientHellos
    after = atk.usage(rig.proc.pid)
    honest.stop()
    for s in socks:
        s.close()
    closed = atk.wait_usage(rig.proc.pid, lambda u: u.fds <= before.fds + 2, 20)
    return {"attack": name, "connections": n, "rss_kib": after.rss_kib - before.rss_kib,
            "kib_per_connection": round((after.rss_kib - before.rss_kib) / n, 1),
            "rss_kib_after_close": closed.rss_kib - before.rss_kib,
            "cpu_s": round(after.cpu_s - before.cpu_s, 3),
            "honest_ok": honest.ok, "honest_failed": len(honest.failed)}


def redos() -> dict:
    from shoal.core import regex
    pattern = "/api/(a+)+"
    n = 24                                  # Python's re doubles per character
    path = "/api/" + "a" * n + "b"
    t = time.perf_counter()
    assert re.fullmatch(pattern, path) is None
    python_re = time.perf_counter() - t
    t = time.perf_counter()
    long_path = "/api/" + "a" * 100_000 + "b"
    assert not regex.fullmatch(pattern, long_path)
    re2_long = time.perf_counter() - t
    t = time.perf_counter()
    assert not regex.fullmatch(pattern, path)
    re2 = time.perf_counter() - t
    return {"attack": "ReDoS /api/(a+)+", f"python_re_{n}_chars_s": round(python_re, 3),
            f"re2_{n}_chars_s": round(re2, 6), "re2_100k_chars_s": round(re2_long, 4),
            "ratio_re_over_re2": round(python_re / max(re2, 1e-9))}


def alias_bomb() -> dict:
    from shoal.core.model import ConfigError, load_text
    levels = "\n".join(f"    {chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9)
                       + "]" for i in range(6))
    text = ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: bomb\n  labels:\n"
            '    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + levels + "\n")
    t = time.perf_counter()
    try:
        load_text(text)
        message = ""
    except ConfigError as e:
        message = str(e)
    return {"attack": "YAML alias bomb", "bytes": len(text),
            "refused_in_s": round(time.perf_counter() - t, 4), "message_chars": len(message)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "attacks.json"))
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="shoal-attacks-"))
    rig = Rig(tmp)
    results = []
    try:
        auth = rig.authority
        results.append(measure(rig, "rapid reset (10,000 HEADERS+RST_STREAM)",
                               lambda a: atk.rapid_reset(a, auth, 10_000)))
        results.append(measure(rig, "CONTINUATION flood (67 x 1 MiB)",
                               lambda a: atk.continuation_flood(a, auth, 67)))
        for kind in ("ping", "settings", "window_update"):
            results.append(measure(rig, f"{kind.upper()} flood (30,000 frames)",
                                   lambda a, k=kind: atk.control_flood(a, k, 30_000)))
        results.append(measure(rig, "empty DATA flood (30,000 frames)",
                               lambda a: atk.empty_data_flood(a, auth, 30_000)))
        results.append(measure(rig, "streams above the limit (200 + 50)",
                               lambda a: atk.too_many_streams(a, auth, 200, 50)))
        results.append(pre_handshake(rig, "silent TCP connections", 2250, b""))
        results.append(pre_handshake(rig, "partial ClientHello", 2250, b"\x16\x03\x01"))
        results.append(pre_handshake(rig, "whole ClientHello, then silence", 1000,
                                     atk.client_hello()))
    finally:
        rig.close()
    results.append(redos())
    results.append(alias_bomb())
    out = {"cpu": cpu_model(), "python": platform.python_version(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"CPU: {out['cpu']}")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
