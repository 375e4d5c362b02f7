"""How the waypoint's C heads are selected (h1native.py): SHOAL_NATIVE=0
keeps the Python parsers; otherwise the module loads on this build."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "from shoal.waypoint.h1native import native; print(native is not None)"


def probe(**env: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_shoal_native_0_selects_the_python_parsers():
    assert probe(SHOAL_NATIVE="0") == "False"


def test_the_c_heads_load_on_this_build():
    # CPython 3.11 with httptools 0.9 (pyproject.toml's pin): the module is
    # built by `pip install -e .` and must pass its ABI self-test.
    assert probe(SHOAL_NATIVE="1") == "True"


MISUSE = """
from shoal.waypoint.native import _h1
def refused():
    for call in (lambda: _h1.Response(True, True),
                 lambda: _h1.parse_request(b"GET / HTTP/1.1\\r\\n\\r\\n")):
        try:
            call()
        except RuntimeError as e:
            print("refused:", e)
refused()
for path in ("/nonexistent/parser.so", _h1.__file__):    # absent; no llhttp in it
    try:
        _h1.init(path)
    except ImportError:
        print("init failed")
refused()
"""


def test_the_module_refuses_work_until_llhttp_is_bound():
    """Used without a successful init() (h1native.py never does), it raises;
    it never calls through a NULL llhttp pointer."""
    out = subprocess.run([sys.executable, "-c", MISUSE], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    refused = ["refused: init() has not succeeded"] * 2
    assert out.stdout.splitlines() == refused + ["init failed"] * 2 + refused


def test_another_httptools_release_falls_back_with_a_warning():
    """Its llhttp may lay out its structs otherwise: the Python parsers
    serve, and the log says why."""
    code = ("import httptools; httptools.__version__ = '0.10.0'\n"
            "from shoal.waypoint.h1native import native; print(native is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "SHOAL_NATIVE": "1"}, timeout=60, check=True)
    assert out.stdout.strip() == "True"
    assert "httptools 0.10.0 is not a verified release" in out.stderr
    assert "using the pure-Python one" in out.stderr


def test_an_exception_from_the_draining_flag_propagates():
    from shoal.waypoint.h1native import native
    if native is None:
        return

    class Bad:
        def __bool__(self):
            raise ZeroDivisionError

    r = native.Response(True, True)
    try:
        r.feed(b"HTTP/1.1 200 OK\r\n", Bad())
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("feed swallowed the exception")
    # Nothing of the refused read was taken.
    assert r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False)[1] == \
        native.HEAD | native.DONE
