"""The conformance echo backend: says what it received and who it is.

Like the Gateway API suite's echo server, every answer names the pod that
served it (`hostname`, from POD_NAME), its namespace (POD_NAMESPACE), and
the request as it arrived: method, path with query, Host / :authority,
protocol and every header (a repeated header keeps each of its values, in
order, so a test can join them as Go's http.Header would).

HTTP/1.1 on --http (any path and method), gRPC on --grpc (any service and
method, a unary call whose request and response are raw bytes: the
response is the same JSON). Standard library plus grpcio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

GRPC_WORKERS = 8    # concurrent calls served; the tests send at most a few at once


def _identity() -> dict:
    return {"hostname": os.environ.get("POD_NAME", ""),
            "namespace": os.environ.get("POD_NAMESPACE", "")}


def _grouped(pairs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        out.setdefault(name.lower(), []).append(value)
    return out


class HttpEcho(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        data = json.dumps({**_identity(), "method": self.command, "path": self.path,
                           "host": self.headers.get("host", ""), "proto": self.request_version,
                           "headers": _grouped(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _answer

    def log_message(self, fmt: str, *args) -> None:
        pass


class GrpcEcho(grpc.GenericRpcHandler):
    """Answers every method: no service definition, bytes in and out."""

    def service(self, details):
        method = details.method
        metadata = [(k, v if isinstance(v, str) else v.decode("latin-1"))
                    for k, v in details.invocation_metadata]

        def echo(request: bytes, context) -> bytes:
            return json.dumps({**_identity(), "method": "POST", "path": method,
                               "proto": "GRPC", "headers": _grouped(metadata)}).encode()

        return grpc.unary_unary_rpc_method_handler(echo)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", type=int, default=8080)
    ap.add_argument("--grpc", type=int, default=7070)
    a = ap.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS),
                         handlers=[GrpcEcho()])
    server.add_insecure_port(f"0.0.0.0:{a.grpc}")
    server.start()
    http = ThreadingHTTPServer(("0.0.0.0", a.http), HttpEcho)
    http.daemon_threads = True
    print(f"echo: http on {a.http}, grpc on {a.grpc}", file=sys.stderr, flush=True)
    http.serve_forever()


if __name__ == "__main__":
    main()
