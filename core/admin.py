"""Admin (15000), metrics (15020) and readiness (15021) servers.

Every worker serves all three on its own SO_REUSEPORT sockets, so readiness
exercises a data-plane process (as ztunnel's does) and /metrics works while
any worker lives. The HTTP side is deliberately tiny: one request per
connection, GET/POST, no bodies (these are operator and scraper endpoints).

    admin 127.0.0.1:15000   /  /config_dump  /logging[?level=L]  /quitquitquit
    metrics :15020          /metrics  /stats/prometheus   (summed over workers)
    readiness :15021        /healthz/ready   200 when routing generation > 0
                                             and app.ready(), else 503 + reason
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar
from urllib.parse import parse_qs

import httptools
import orjson

from shoal.core import metrics as core_metrics
from shoal.core.log import current_spec, parse_spec

# A request line plus headers from curl or Prometheus is < 1 KiB; anything
# near this is not an operator talking to us.
MAX_REQUEST_BYTES = 16 * 1024

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    def encode(self) -> bytes:
        head = (f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}\r\n"
                f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
                "Connection: close\r\n\r\n")
        return head.encode() + self.body


def json_response(obj: object, status: int = 200) -> Response:
    return Response(status=status, body=orjson.dumps(obj, default=_jsonable, option=orjson.OPT_INDENT_2)
                    + b"\n", content_type="application/json")


def _jsonable(obj: object) -> object:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def text(body: str, status: int = 200) -> Response:
    return Response(status=status, body=body.encode())


Handler = Callable[[Request], Response]


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 request per connection, dispatched to `handler`."""

    def __init__(self, handler: Handler, log: logging.Logger) -> None:
        self._handler = handler
        self._log = log
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._size = 0
        self._transport: asyncio.Transport | None = None

    # asyncio side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_REQUEST_BYTES:
            return self._reply(text("request too large\n", 413))
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply(text("upgrade not supported\n", 400))
        except httptools.HttpParserError as e:
            self._reply(text(f"malformed request: {e}\n", 400))

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self._url)
        query = {k: v[-1] for k, v in parse_qs((parsed.query or b"").decode()).items()}
        req = Request(method=self._parser.get_method().decode(), path=parsed.path.decode(), query=query)
        try:
            resp = self._handler(req)
        except Exception as e:  # an endpoint bug must not kill the worker
            self._log.exception("admin handler failed", extra={"fields": {"path": req.path}})
            resp = text(f"internal error: {e}\n", 500)
        self._reply(resp)

    def _reply(self, resp: Response) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(resp.encode())
            t.close()


def routes(table: dict[str, Handler], *, index_title: str | None = None) -> Handler:
    """Dispatch on path; unknown paths get 404 with the list of endpoints."""
    def handle(req: Request) -> Response:
        fn = table.get(req.path)
        if fn is None:
            if req.path == "/" and index_title is not None:
                return text(index_title + "\n" + "".join(f"  {p}\n" for p in sorted(table)))
            return text("not found; endpoints:\n" + "".join(f"  {p}\n" for p in sorted(table)), 404)
        return fn(req)
    return handle


# The routing view a worker serves: routing's View, which core does not import.
V = TypeVar("V")


class Endpoints(Generic[V]):
    """The handlers, bound to one worker's state.

    Args:
        app: the shards App (admin_sections, ready).
        view: callable returning the worker's RoutingView.
        dump_routing: view -> JSON-able dump (routing.dump.dump_view).
        set_log_level: applies a level in EVERY worker (shared control word).
        quit: asks the supervisor for a graceful stop.
        info: static facts about this worker for /config_dump.
    """

    def __init__(self, *, app, view: Callable[[], V], dump_routing: Callable[[V], object],
                 set_log_level: Callable[[str], None], quit: Callable[[], None],
                 info: Callable[[], dict], draining: Callable[[], bool]) -> None:
        self.app = app
        self.view = view
        self.dump_routing = dump_routing
        self.set_log_level = set_log_level
        self.quit = quit
        self.info = info
        self.draining = draining

    def admin_handler(self) -> Handler:
        return routes({"/config_dump": self.config_dump, "/logging": self.logging,
                       "/quitquitquit": self.quitquitquit}, index_title="shoal admin endpoints:")

    def metrics_handler(self) -> Handler:
        return routes({"/metrics": self.metrics, "/stats/prometheus": self.metrics})

    def readiness_handler(self) -> Handler:
        return routes({"/healthz/ready": self.ready})

    def config_dump(self, req: Request) -> Response:
        view = self.view()
        out: dict[str, object] = {"worker": self.info(), "routing": self.dump_routing(view)}
        # An app may lay out top-level keys itself (the ztunnel: Istio's layout).
        admin_dump = getattr(self.app, "admin_dump", None)
        if admin_dump is not None:
            try:
                out.update(admin_dump(view))
            except Exception as e:
                out["error"] = f"admin_dump: {e}"
        for name, fn in self.app.admin_sections().items():
            try:
                out[name] = fn()
            except Exception as e:
                out[name] = {"error": str(e)}
        return json_response(out)

    def logging(self, req: Request) -> Response:
        """ztunnel's /logging: `level=info`, or per scope `level=access:debug,info`."""
        level = req.query.get("level")
        if level is None:
            return json_response({"level": current_spec(), "pid": os.getpid()})
        if req.method != "POST":
            return text("changing the level needs POST (curl -X POST ...)\n", 405)
        try:
            parse_spec(level)
        except ValueError as e:
            return text(f"{e}\nusage: POST /logging?level=<level> or "
                        "?level=<scope>:<level>,<level>\n", 400)
        self.set_log_level(level.lower())
        return json_response({"level": current_spec(), "pid": os.getpid()})

    def quitquitquit(self, req: Request) -> Response:
        if req.method != "POST":
            return text("/quitquitquit needs POST\n", 405)
        self.quit()
        return text("OK\n")

    def metrics(self, req: Request) -> Response:
        body, ctype = core_metrics.render()
        return Response(body=body, content_type=ctype)

    def ready(self, req: Request) -> Response:
        reason = self.not_ready_reason()
        if reason:
            return text(f"not ready: {reason}\n", 503)
        return text("ready\n")

    def not_ready_reason(self) -> str:
        if self.draining():
            return "draining"
        view = self.view()
        if getattr(view, "generation", 0) <= 0:
            return "no routing config received yet (generation 0)"
        try:
            if not self.app.ready():
                return f"{getattr(self.app, 'name', 'app')} not ready"
        except Exception as e:
            return f"readiness check failed: {e}"
        return ""
