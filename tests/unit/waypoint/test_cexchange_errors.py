"""native/cexchange.c when a Python call it makes fails or answers
something else than it expects: session._c_adopt(self, "error", exc) gets
the exception once (Python cuts the request, as Exchange.upstream_data
does on any exception), never a crash or an exchange left half done."""

from __future__ import annotations

import pytest

from shoal.waypoint.h1native import native

pytestmark = pytest.mark.skipif(native is None, reason="native path off (SHOAL_NATIVE=0)")

DONE = 4        # Response.feed's code bit (_h1.c R_DONE; checked below when native loads)


class Session:
    """The three calls a CExchange makes on its FastSession."""

    def __init__(self) -> None:
        self.failed: list[BaseException] = []
        self.done = 0

    def _c_done(self, cex) -> None:
        self.done += 1

    def _c_slot(self, cex) -> int:
        raise RuntimeError("a telemetry bug")

    def _c_adopt(self, cex, what, *args) -> None:
        assert what == "error", f"adopt({what}) was not expected"
        self.failed.append(args[0])


class Proxy:
    draining = False


class Answers:
    """A stand-in for _h1.Response whose feed returns (or raises) `answer`."""

    status = 200
    body_bytes = 0

    def __init__(self, answer) -> None:
        self.answer = answer

    def feed(self, data: bytes, draining: bool):
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def exchange(response) -> tuple[Session, object]:
    s = Session()
    return s, native.CExchange(s, None, None, response, Proxy(), None, "ep", (), None, None,
                               None, 0.0)


@pytest.mark.parametrize("answer, error", [
    (None, TypeError),                          # not a tuple: was read as one (a crash)
    ((b"",), TypeError),
    (("text", DONE), TypeError),
    ((b"", "not a code"), TypeError),           # was an unchecked error, then all bits set
    (MemoryError(), MemoryError),
])
def test_a_bad_or_failed_feed_is_handed_over_as_an_error(answer, error):
    s, cex = exchange(Answers(answer))
    assert cex.upstream_data(b"HTTP/1.1 200 OK\r\n") is None
    assert [type(e) for e in s.failed] == [error] and s.done == 0
    # Ended: nothing more reaches Python for it.
    assert cex.upstream_data(b"more") is None and cex.upstream_lost(None) is None
    assert cex.client_lost() is None and len(s.failed) == 1


def test_a_failed_count_at_the_end_is_handed_over_as_an_error():
    """The response ended but counting it failed: not `ended` with nobody
    to give the connection back (its client would wait for good)."""
    s = Session()
    tally = native.Tally([1.0, float("inf")], [1.0, float("inf")])
    cex = native.CExchange(s, None, None, Answers((b"", DONE)), Proxy(), None, "ep", (),
                           None, tally, {}, 0.0)
    assert cex.upstream_data(b"x") is None
    assert [str(e) for e in s.failed] == ["a telemetry bug"] and s.done == 0
    assert s.failed[0].__traceback__ is not None and not cex.counted
    cex.upstream_lost(None)
    assert len(s.failed) == 1 and tally.take() == []


def test_done_is_the_modules_bit():
    assert native.DONE == DONE
