"""Build hooks: the HBONE data path's C extension, `shoal.core.hbone.native._native`
(core/hbone/native/_native.c; selected in core/hbone/fastpath.py), the
waypoint's HTTP/1.1 heads, `shoal.waypoint.native._h1`, and the
CNI plugin binary (cni/native/shoal_cni.c) compiled into the package as
`shoal/cni/bin/shoal-cni` (package data).

The container runtime runs the plugin on the node, outside any container and
without Python, so it is C, linked statically against glibc when libc.a is
there (Debian's libc6-dev ships it) and dynamically otherwise (a warning
says so). It runs for wheels and for `pip install -e .` alike: setuptools'
editable install runs build_py too, and the binary is written next to the
source so the editable package finds it.
"""

import ast
import os
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "cni", "native", "shoal_cni.c")
SPEC = os.path.join(HERE, "cni", "spec.py")
TARGET = os.path.join(HERE, "cni", "bin", "shoal-cni")
# Optional: on a Python whose _ssl layout it does not know (not CPython 3.11)
# the module refuses to compile and HBONE keeps its pure-Python path
# (tests/unit/hbone/test_native.py fails loudly if 3.11 lost it).
NATIVE = Extension("shoal.core.hbone.native._native",
                   sources=["core/hbone/native/_native.c", "core/hbone/native/attrs.c",
                            "core/hbone/native/relay.c", "core/hbone/native/send.c",
                            "core/hbone/native/plain.c", "core/hbone/native/tlspump.c",
                            "core/hbone/native/channel.c", "core/hbone/native/flow.c"],
                   depends=["core/hbone/native/_native.h"],
                   extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
                   libraries=["dl"], optional=True)
# The waypoint's HTTP/1.1 heads (waypoint/native/_h1.c; selected in
# waypoint/h1native.py): optional for the same reason, the Python parsers stay.
H1 = Extension("shoal.waypoint.native._h1",
               sources=["waypoint/native/_h1.c", "waypoint/native/plan.c",
                        "waypoint/native/cexchange.c", "waypoint/native/tally.c",
                        "waypoint/native/cend.c", "waypoint/native/cstart.c"],
               depends=["waypoint/native/_h1.h"],
               extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
               libraries=["dl"], optional=True)
CFLAGS = ["-Os", "-Wall", "-Wextra", "-std=c11", "-D_FORTIFY_SOURCE=2"]


def spec_versions() -> tuple[list[str], str]:
    """SUPPORTED_VERSIONS and LATEST_VERSION from cni/spec.py, read without
    importing it (the build environment has none of shoal's dependencies)."""
    found = {}
    for node in ast.parse(open(SPEC).read()).body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        name = getattr(target, "id", None)
        if name in ("SUPPORTED_VERSIONS", "LATEST_VERSION"):
            found[name] = ast.literal_eval(node.value)
    return list(found["SUPPORTED_VERSIONS"]), found["LATEST_VERSION"]


def compile_plugin() -> None:
    versions, latest = spec_versions()
    defs = [f"-DSHOAL_CNI_SUPPORTED_VERSIONS={','.join(chr(34) + v + chr(34) for v in versions)}",
            f'-DSHOAL_CNI_LATEST_VERSION="{latest}"']
    os.makedirs(os.path.dirname(TARGET), exist_ok=True)
    tmp = TARGET + ".tmp"
    cc = os.environ.get("CC", "gcc")
    base = [cc, *CFLAGS, *defs, "-o", tmp, SOURCE]
    r = subprocess.run([*base[:1], "-static", "-s", *base[1:]], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"shoal: static link of the CNI plugin failed ({r.stderr.strip()[-300:]}); "
              "building it dynamically against glibc", file=sys.stderr)
        subprocess.run([*base[:1], "-s", *base[1:]], check=True)
    os.chmod(tmp, 0o755)
    os.replace(tmp, TARGET)


class BuildPyWithPlugin(build_py):
    def run(self):
        if not os.path.exists(TARGET) or any(
                os.path.getmtime(src) > os.path.getmtime(TARGET) for src in (SOURCE, SPEC)):
            compile_plugin()
        super().run()


setup(cmdclass={"build_py": BuildPyWithPlugin}, ext_modules=[NATIVE, H1])
