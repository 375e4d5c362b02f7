"""core.admin: the tiny HTTP protocol (fed byte by byte) and the endpoints."""

import logging

import pytest

from shoal.core import admin
from shoal.core.admin import Endpoints, HttpProtocol, Request


class MockTransport:
    def __init__(self):
        self.buffer = b""
        self.closed = False

    def write(self, data):
        self.buffer += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed


def serve(handler, raw: bytes, byte_by_byte: bool = True) -> bytes:
    p = HttpProtocol(handler, logging.getLogger("test"))
    t = MockTransport()
    p.connection_made(t)
    chunks = [raw[i:i + 1] for i in range(len(raw))] if byte_by_byte else [raw]
    for c in chunks:
        if t.closed:
            break
        p.data_received(c)
    assert t.closed
    return t.buffer


def echo_handler(req: Request):
    return admin.text(f"{req.method} {req.path} {sorted(req.query.items())}")


@pytest.mark.parametrize("byte_by_byte", [True, False])
def test_request_parsed_and_answered_once(byte_by_byte):
    out = serve(echo_handler, b"GET /logging?level=debug&x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
                byte_by_byte)
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: %d" % len(body) in head and b"Connection: close" in head
    assert body == b"GET /logging [('level', 'debug'), ('x', '1')]"


def test_malformed_request_is_400():
    assert serve(echo_handler, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_oversized_request_is_413():
    raw = b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * admin.MAX_REQUEST_BYTES + b"\r\n\r\n"
    assert serve(echo_handler, raw, byte_by_byte=False).startswith(b"HTTP/1.1 413 ")


def test_handler_exception_is_500_not_a_crash():
    def boom(req):
        raise KeyError("x")
    assert serve(boom, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 500 ")


def test_unknown_path_lists_endpoints():
    h = admin.routes({"/a": echo_handler, "/b": echo_handler}, index_title="t")
    out = serve(h, b"GET /zzz HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404 ") and b"/a" in out and b"/b" in out
    assert b"  /a\n  /b\n" in serve(h, b"GET / HTTP/1.1\r\n\r\n")


class FakeApp:
    name = "fake"

    def __init__(self):
        self.is_ready = True

    def ready(self):
        return self.is_ready

    def admin_sections(self):
        return {"extra": lambda: {"k": 1}, "broken": lambda: 1 / 0}


class FakeView:
    def __init__(self, generation):
        self.generation = generation

    def status(self):
        return {"generation": self.generation}


def endpoints(generation=1, draining=False, app=None):
    calls = []
    ep = Endpoints(app=app or FakeApp(), view=lambda: FakeView(generation),
                   dump_routing=lambda v: v.status(), set_log_level=calls.append,
                   quit=lambda: calls.append("quit"), info=lambda: {"pid": 1},
                   draining=lambda: draining)
    return ep, calls


def test_readiness_reasons():
    ep, _ = endpoints(generation=0)
    r = ep.ready(Request(method="GET", path="/healthz/ready"))
    assert r.status == 503 and b"generation 0" in r.body
    app = FakeApp()
    app.is_ready = False
    ep, _ = endpoints(app=app)
    assert ep.ready(Request(method="GET", path="/")).status == 503
    ep, _ = endpoints(draining=True)
    assert b"draining" in ep.ready(Request(method="GET", path="/")).body
    ep, _ = endpoints()
    assert ep.ready(Request(method="GET", path="/")).status == 200


def test_logging_needs_post_and_a_known_level():
    ep, calls = endpoints()
    assert ep.logging(Request(method="GET", path="/logging")).status == 200
    assert ep.logging(Request(method="GET", path="/logging", query={"level": "debug"})).status == 405
    bad = ep.logging(Request(method="POST", path="/logging", query={"level": "loud"}))
    assert bad.status == 400 and b"unknown level" in bad.body
    assert ep.logging(Request(method="POST", path="/logging", query={"level": "DEBUG"})).status == 200
    assert calls == ["debug"]


def test_quitquitquit_needs_post():
    ep, calls = endpoints()
    assert ep.quitquitquit(Request(method="GET", path="/quitquitquit")).status == 405
    assert ep.quitquitquit(Request(method="POST", path="/quitquitquit")).status == 200
    assert calls == ["quit"]


def test_config_dump_includes_app_sections_and_survives_a_broken_one():
    import orjson
    ep, _ = endpoints()
    body = orjson.loads(ep.config_dump(Request(method="GET", path="/config_dump")).body)
    assert body["routing"] == {"generation": 1} and body["extra"] == {"k": 1}
    assert "division" in body["broken"]["error"]
