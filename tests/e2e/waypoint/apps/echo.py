"""A tiny HTTP/1.1 backend for the waypoint e2e tests (standard library only).

Every answer is JSON naming the version that served it and echoing the
request (method, path, headers), so a test can see what the waypoint did
to a request. Special paths:
  /slow?ms=N     answers after N milliseconds (timeouts)
  /flaky?key=K&fail=N  503 for the first N requests with key K, then 200;
                 the body counts the attempts (retries)
Every request is also printed to stdout (the pod's log), so a mirror
target's copy can be found.
"""

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_SLOW_MS = 30_000  # a slow answer never holds a thread longer than a test runs


def make_handler(version: str):
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            body_in = self.rfile.read(n) if n else b""
            url = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            print(f"{version} {self.command} {self.path} host={self.headers.get('host')}", flush=True)
            status = 200
            out = {"version": version, "pod": os.environ.get("POD_NAME", ""),
                   "method": self.command, "path": self.path,
                   "headers": {k.lower(): v for k, v in self.headers.items()},
                   "body_len": len(body_in)}
            if url.path == "/slow":
                time.sleep(min(int(q.get("ms", "1000")), MAX_SLOW_MS) / 1000)
            elif url.path == "/flaky":
                key = q.get("key", "")
                with lock:
                    attempts[key] = attempts.get(key, 0) + 1
                    out["attempt"] = attempts[key]
                if out["attempt"] <= int(q.get("fail", "1")):
                    status = 503
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, fmt: str, *args) -> None:
            pass

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--version", default="v1")
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("0.0.0.0", a.port), make_handler(a.version))
    srv.daemon_threads = True
    print(f"echo {a.version} listening on {a.port}", file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
