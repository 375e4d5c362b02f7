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
