"""The wheel installs one package, `shoal`, and the console scripts.

Built with pip from the checkout (as a user or CI would), then inspected and
installed into an empty directory: nothing but `shoal` and its dist-info at
the top level, the script `shoal`, the CNI plugin binary `shoal/cni/bin/shoal-cni`
(compiled C, package data), the HBONE C extension (core/hbone/native), no test code, no load runs, and the installed
package imports and runs from there alone.
"""

from __future__ import annotations

import configparser
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
# A wheel build (isolated: pip fetches setuptools) and an install take a few
# seconds each on this machine class.
BUILD_TIMEOUT = 300
# The build runs in the module's first test: give it the build's own bound,
# not pytest's default per-test timeout.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 60)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, timeout=BUILD_TIMEOUT, capture_output=True)
    (built,) = out.glob("shoal-*.whl")
    return built


def test_the_wheel_holds_only_the_shoal_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = next(t for t in top if t.endswith(".dist-info"))
    assert top == {"shoal", dist_info}, f"top-level entries besides shoal: {top - {'shoal', dist_info}}"
    for folder in ("core", "routing", "shards", "controlplane", "ztunnel", "waypoint", "cni",
                   "benchmarks"):
        assert f"shoal/{folder}/__init__.py" in names
    assert "shoal/benchmarks/bench_identity_ca.py" in names      # `shoal bench` studies
    test_only = [n for n in names if n.startswith(("shoal/tests/", "shoal/benchmarks/load/"))
                 or "/helpers/" in n]
    assert not test_only, f"test-only code in the wheel: {test_only}"


def test_the_console_script_is_shoal_and_the_plugin_is_a_binary(wheel):
    zf = zipfile.ZipFile(wheel)
    ep = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(zf.read(ep).decode())
    assert dict(parser["console_scripts"]) == {"shoal": "shoal.cli:main"}
    assert not [s for s in parser.sections() if s != "console_scripts"]
    native = [n for n in zf.namelist() if n.startswith("shoal/core/hbone/native/_native.")
              and n.endswith(".so")]
    assert native, "the HBONE data path's C extension is missing from the wheel"
    assert "shoal/core/hbone/native/_native.pyi" in zf.namelist(), "the C extension's stub"
    info = zf.getinfo("shoal/cni/bin/shoal-cni")
    assert (info.external_attr >> 16) & 0o111, "plugin binary not executable in the wheel"
    assert zf.read(info)[:4] == b"\x7fELF"


def test_the_installed_package_runs_on_its_own(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=BUILD_TIMEOUT, capture_output=True)
    top = {p.name for p in target.iterdir()}
    assert top - {"bin"} == {"shoal", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                             + ".dist-info"}
    assert "shoal" in {p.name for p in (target / "bin").iterdir()}
    plugin = target / "shoal" / "cni" / "bin" / "shoal-cni"
    assert os.access(plugin, os.X_OK)
    # Away from the checkout: the dependencies come from this venv, shoal from `target`.
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", "import shoal.cli, shoal.ztunnel.app, "
                          "shoal.waypoint.app, shoal.benchmarks.bench_identity_ca; "
                          "print(shoal.cli.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target)), out.stdout
    version = subprocess.run([sys.executable, "-m", "shoal", "version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("shoal "), version.stderr
