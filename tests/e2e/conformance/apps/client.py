"""The conformance client, run inside a mesh pod (`shoal mesh exec`).

    python client.py '[{"protocol": "http", "host": "echo", "path": "/", ...}, ...]'

Sends each request (`count` times) from the pod, never following
redirects, and prints one JSON list: per request, a list of responses
`{"code", "headers", "echo", "error"}` where `headers` are the response
headers (lower-case name -> values) and `echo` what the echo backend
reported. A gRPC call's `code` is 200 when its status is OK, else the gRPC
status name (the suite maps OK to 200 the same way).

Names resolve through the pod's /etc/hosts (the mesh writes cluster DNS
names there); gRPC is told to use the system resolver for that reason.
"""

from __future__ import annotations

import http.client
import json
import os
import sys

os.environ.setdefault("GRPC_DNS_RESOLVER", "native")

import grpc  # noqa: E402  (after the resolver choice)

TIMEOUT_S = 5.0          # one request; the test retries until its own deadline
GRPC_METHOD = "/grpc.testing.EchoTestService/Echo"


def _split(host: str, default_port: int) -> tuple[str, int]:
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and not name.endswith("]"):
        return name, int(port)
    return host, default_port


def _http(req: dict) -> dict:
    host, port = _split(req["host"], 80)
    headers = dict(req.get("headers") or {})
    host_header = next((v for k, v in headers.items() if k.lower() == "host"), None)
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        conn.putrequest(req.get("method") or "GET", req.get("path") or "/",
                        skip_host=host_header is not None, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    out: dict[str, list[str]] = {}
    for k, v in resp.getheaders():
        out.setdefault(k.lower(), []).append(v)
    try:
        echo = json.loads(body) if body else None
    except ValueError:
        echo = None
    return {"code": resp.status, "headers": out, "echo": echo}


def _grpc(req: dict, channels: dict) -> dict:
    host, port = _split(req["host"], 7070)
    target = f"{host}:{port}"
    channel = channels.get(target)
    if channel is None:
        channel = channels[target] = grpc.insecure_channel(target)
    call = channel.unary_unary(req.get("path") or GRPC_METHOD)
    metadata = [(k.lower(), v) for k, v in (req.get("headers") or {}).items()]
    try:
        body, state = call.with_call(b"", metadata=metadata, timeout=TIMEOUT_S)
    except grpc.RpcError as e:
        return {"code": e.code().name, "headers": {}, "echo": None, "error": e.details()}
    out: dict[str, list[str]] = {}
    for k, v in state.initial_metadata() or ():
        out.setdefault(k.lower(), []).append(v if isinstance(v, str) else v.decode("latin-1"))
    return {"code": 200, "headers": out, "echo": json.loads(body)}


def main() -> None:
    requests = json.loads(sys.argv[1])
    channels: dict = {}
    results = []
    for req in requests:
        got = []
        for _ in range(int(req.get("count", 1))):
            try:
                got.append(_grpc(req, channels) if req.get("protocol") == "grpc" else _http(req))
            except (OSError, http.client.HTTPException) as e:
                got.append({"code": None, "headers": {}, "echo": None, "error": repr(e)})
        results.append(got)
    for ch in channels.values():
        ch.close()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
