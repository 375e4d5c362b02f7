"""Fixtures for waypoint integration tests: real backends on loopback."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.helpers.pki import TestPKI, write_credential_dir
from tests.helpers.waypoint_backend import Backend
from tests.helpers.waypoint_mesh import WAYPOINT_ID, loopback_ip


# The L7 behaviour tests run on both ways of serving the plaintext listener:
# the callback fast path (waypoint/fastpath.py) and the coroutine path it
# falls back to (SHOAL_WAYPOINT_FAST=0).
BOTH_PATHS_MODULES = ("test_waypoint_http",)


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__.rsplit(".", 1)[-1] in BOTH_PATHS_MODULES:
        metafunc.fixturenames.append("serving_path")
        metafunc.parametrize("serving_path", ["fast", "coroutine"], indirect=True)


@pytest.fixture
def serving_path(request, monkeypatch):
    from shoal.waypoint.fastpath import FAST_ENV
    monkeypatch.setenv(FAST_ENV, "1" if request.param == "fast" else "0")
    return request.param


@pytest.fixture(scope="module")
def pki():
    return TestPKI()


@pytest.fixture
def cert_dir(pki, tmp_path) -> str:
    """The waypoint's credential directory (`--cert-dir`), issued by `pki`."""
    return str(write_credential_dir(pki.issue(WAYPOINT_ID), tmp_path))


@pytest.fixture
def backends():
    made: list[Backend] = []

    def make(name: str) -> Backend:
        b = Backend(name, loopback_ip()).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


class Client:
    """http.client against the plaintext listener (an independent HTTP/1.1 client)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str = "/", host: str = "echo:8080", method: str = "GET",
            headers: dict | None = None, body: bytes | None = None):
        self.conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        r = self.conn.getresponse()
        data = r.read()
        if r.getheader("connection", "").lower() == "close":
            self.conn.close()
        return r, data

    def json(self, *a, **kw):
        r, data = self.get(*a, **kw)
        return r, json.loads(data) if data.startswith(b"{") else data

    def close(self):
        self.conn.close()
