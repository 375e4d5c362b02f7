"""ResponseFramer: how one response is framed for an HTTP/1.x client (pure)."""

from __future__ import annotations

from shoal.waypoint.h1framing import ResponseFramer
from shoal.waypoint.http1 import RequestReceived
from shoal.waypoint.message import RequestHead


def req(version: str = "1.1", keep_alive: bool = True, upgrade: bool = False) -> RequestReceived:
    return RequestReceived(head=RequestHead(method="GET", target="/"), http_version=version,
                           keep_alive=keep_alive, upgrade=upgrade, chunked=False,
                           content_length=None)


def test_a_sized_response_leaves_in_one_piece_with_its_head():
    f = ResponseFramer(req(), draining=False)
    f.start(200, [("content-length", "5")], content_length=5)
    assert f.body(b"hello") == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    assert f.end() == b"" and not f.close_after


def test_unknown_length_is_chunked_for_http11_and_close_delimited_for_http10():
    f = ResponseFramer(req(), draining=False)
    f.start(200, [], content_length=None)
    assert f.body(b"ab") == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n"
    assert f.body(b"") == b""
    assert f.end() == b"0\r\n\r\n"
    f10 = ResponseFramer(req("1.0"), draining=False)
    f10.start(200, [], content_length=None)
    assert f10.close_after
    assert f10.body(b"ab") == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nab"
    assert f10.end() == b""


def test_http10_keep_alive_is_said_and_draining_closes():
    f = ResponseFramer(req("1.0"), draining=False)
    f.start(204, [], content_length=None, no_body=True)
    assert f.end() == b"HTTP/1.1 204 No Content\r\nconnection: keep-alive\r\n\r\n"
    d = ResponseFramer(req(), draining=True)
    d.start(200, [("content-length", "0")], content_length=0)
    assert d.close_after and d.end().endswith(b"connection: close\r\n\r\n")


def test_trailers_only_fit_a_chunked_response():
    f = ResponseFramer(req(), draining=False)
    f.start(200, [], content_length=None)
    f.take_head()
    f.trailers([("grpc-status", "0")])
    assert f.end() == b"0\r\ngrpc-status: 0\r\n\r\n"
    sized = ResponseFramer(req(), draining=False)
    sized.start(200, [("content-length", "0")], content_length=0)
    sized.take_head()
    sized.trailers([("grpc-status", "0")])
    assert sized.end() == b""


def test_informational_passes_only_100_to_http11():
    assert ResponseFramer(req(), False).informational(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert ResponseFramer(req(), False).informational(103) == b""
    assert ResponseFramer(req("1.0"), False).informational(100) == b""


def test_a_101_head_is_kept_as_the_upstream_sent_it():
    f = ResponseFramer(req(upgrade=True), draining=True)
    f.start(101, [("upgrade", "websocket"), ("connection", "Upgrade")], content_length=None,
            reason="Switching Protocols", no_body=True)
    assert f.take_head() == (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                             b"connection: Upgrade\r\n\r\n")
    assert not f.close_after and not f.chunked


def test_local_answers_close_when_the_client_or_the_drain_says_so():
    data, keep = ResponseFramer(req(), False).local(404, b"no route", [])
    assert keep and data.startswith(b"HTTP/1.1 404 Not Found\r\n") and data.endswith(b"no route")
    for r, draining in ((req(keep_alive=False), False), (req(upgrade=True), False), (req(), True)):
        data, keep = ResponseFramer(r, draining).local(403, b"", [("x", "y")])
        assert not keep and b"connection: close" in data and b"x: y\r\n" in data
