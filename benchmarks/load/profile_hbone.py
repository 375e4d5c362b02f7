"""Profile the HBONE pair's entry side under the load run's iperf3 bulk.

    python -m shoal.benchmarks.load.profile_hbone SECONDS STREAMS OUT [FRAME ...]

Starts the load run's shoal pair (shoal.benchmarks.load.hbone, 1 process a
side), runs `iperf3 -P STREAMS` through it for SECONDS + 2 s while `py-spy
record --format raw` samples the entry process for SECONDS (collapsed
stacks in OUT), then prints the share of samples whose stack holds each
FRAME (default: the pipe's copy task and the Python DATA write path).
docs/bench/hbone.md has the figures. A load run: hold /tmp/shoal-netns.lock.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.benchmarks.load.hbone import (CLIENT_ID, SERVER_ID, TestPKI, start_iperf_server,
                                         start_shoal, stop, write_pem)

# Samples per second: a few thousand samples in 8 s, and little enough that
# py-spy's own CPU stays small beside the busy entry process.
PYSPY_RATE = 250
# iperf3 starts before py-spy and ends after it: ramp-up and teardown stay out.
MARGIN_SECONDS = 2
DEFAULT_FRAMES = ("_copy", "HboneStream.write", "_write_native", "data_received")


def shares(path: Path, frames) -> tuple[int, dict[str, float]]:
    """Samples in a py-spy raw file, and the share whose stack names each frame."""
    total, hits = 0, dict.fromkeys(frames, 0)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for f in frames:
            if f"{f} (" in stack or f".{f} (" in stack:
                hits[f] += n
    return total, {f: hits[f] / total if total else 0.0 for f in frames}


def main() -> None:
    seconds, streams, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    frames = tuple(sys.argv[4:]) or DEFAULT_FRAMES
    tmp = Path(tempfile.mkdtemp(prefix="shoal-hbone-profile-"))
    pki = TestPKI()
    files = (write_pem(pki.issue(SERVER_ID), tmp, "server"),
             write_pem(pki.issue(CLIENT_ID), tmp, "client"))
    srv, port = start_iperf_server()
    pair = start_shoal(tmp, files, port)
    try:
        load = subprocess.Popen(["iperf3", "-c", "127.0.0.1", "-p", str(pair.port), "-t",
                                 str(seconds + 2 * MARGIN_SECONDS), "-P", str(streams)],
                                stdout=subprocess.DEVNULL)
        time.sleep(MARGIN_SECONDS)
        subprocess.run([str(Path(sys.executable).with_name("py-spy")), "record", "-p",
                        str(pair.entry_pids[0]), "-d", str(seconds), "-r", str(PYSPY_RATE),
                        "--nonblocking", "--format", "raw", "-o", str(out)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        load.wait(timeout=seconds + 30)
    finally:
        pair.stop()
        stop(srv)
    total, share = shares(out, frames)
    print(f"{total} samples of the entry process")
    for f, s in share.items():
        print(f"{s:6.1%}  {f}")


if __name__ == "__main__":
    main()
