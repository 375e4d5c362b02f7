"""A real HTTP/1.1 backend for waypoint tests (stdlib http.server, in a thread).

    b = Backend("v1", host="127.23.0.1").start()     # port chosen by the kernel
    b.port, b.hits["/path"], b.requests[-1].headers
    b.stop()

Paths (any method):
- `/slow/<ms>`: answer after <ms> milliseconds;
- `/status/<code>`: answer <code>;
- `/flaky/<n>`: the first <n> requests answer 503, then 200;
- `/reset`: close the connection without answering;
- `/bytes/<n>`: <n> bytes of body;
- `/chunked`: a chunked response;
- `/ws`: with `Upgrade: websocket`, answer 101 and echo raw bytes;
- anything else: 200 with a JSON body {backend, method, path, headers, body}.
Set `b.fail_status = 503` to make every request fail (outlier tests).
Every response carries `x-backend: <name>`.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "backend"
    disable_nagle_algorithm = True   # as real servers do; else 40 ms delayed-ACK stalls

    def log_message(self, *args) -> None:   # quiet
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("content-length") or 0)
        if n:
            return self.rfile.read(n)
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _send(self, code: int, body: bytes, extra=()) -> None:
        if code in (204, 304) and not self.server.backend.bad_204:
            body = b""
        self.send_response(code)
        self.send_header("x-backend", self.server.backend.name)
        self.send_header("content-length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and (code not in (204, 304) or self.server.backend.bad_204):
            self.wfile.write(body)

    def _handle(self) -> None:
        b = self.server.backend
        body = self._body()
        path = self.path.split("?", 1)[0]
        with b.lock:
            b.hits[path] += 1
            b.requests.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if b.fail_status:
            return self._send(b.fail_status, b"failing on purpose\n")
        parts = path.strip("/").split("/")
        if parts[0] == "slow":
            time.sleep(int(parts[1]) / 1000)
        if parts[0] == "status":
            return self._send(int(parts[1]), b"status\n")
        if parts[0] == "flaky":
            with b.lock:
                b.flaky_count[path] += 1
                n = b.flaky_count[path]
            return self._send(503 if n <= int(parts[1]) else 200, b"flaky\n")
        if parts[0] == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
            return
        if parts[0] == "bytes":
            return self._send(200, b"x" * int(parts[1]))
        if parts[0] == "chunked":
            self.send_response(200)
            self.send_header("x-backend", b.name)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if parts[0] == "ws" and (self.headers.get("upgrade") or "").lower() == "websocket":
            self.send_response(101)
            self.send_header("upgrade", "websocket")
            self.send_header("connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
            return
        out = json.dumps({"backend": b.name, "method": self.command, "path": self.path,
                          "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": body.decode("latin-1")}).encode()
        self._send(200, out, [("content-type", "application/json")])

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        pass   # clients cut off by timeouts are expected in these tests


class Backend:
    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.hits: Counter = Counter()
        self.flaky_count: Counter = Counter()
        self.requests: list[Seen] = []
        self.fail_status = 0          # answer every request with this status when set
        self.bad_204 = False          # send a body with 204 (a broken server)
        self.lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "Backend":
        self._server = _Server((self.host, 0), _Handler)
        self._server.backend = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True,
                                        name=f"backend-{self.name}")
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
