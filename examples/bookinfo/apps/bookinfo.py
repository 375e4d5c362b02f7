"""A tiny bookinfo-like app for shoal's local mesh (standard library only).

Each role is an HTTP/1.1 server; productpage calls details and reviews,
reviews calls ratings in another namespace, so one page view crosses
services, namespaces and nodes. Responses are JSON naming who served them,
which makes load balancing and policy effects visible from `curl`.
"""

import argparse
import json
import os
import socket
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM_TIMEOUT = 5.0  # seconds; well above a mesh hop, short enough for a demo

UPSTREAMS = {
    "productpage": ["http://details:9080/", "http://reviews:9080/"],
    "reviews": ["http://ratings.ratings:9080/"],
}


def call(url: str) -> object:
    try:
        with urllib.request.urlopen(url, timeout=UPSTREAM_TIMEOUT) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return {"error": f"{url}: {exc}"}


def make_handler(role: str, version: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = {"service": role, "version": version, "pod": socket.gethostname(),
                    "pod_name": os.environ.get("POD_NAME", ""),
                    "calls": [call(u) for u in UPSTREAMS.get(role, [])]}
            if role == "ratings":
                body["stars"] = 5 if version == "v2" else 4
            data = json.dumps(body).encode() + b"\n"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["productpage", "details", "reviews", "ratings"])
    parser.add_argument("--version", default="v1")
    parser.add_argument("--port", type=int, default=9080)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("0.0.0.0", args.port), make_handler(args.role, args.version))
    server.serve_forever()


if __name__ == "__main__":
    main()
