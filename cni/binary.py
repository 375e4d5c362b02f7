"""Where the built `shoal-cni` plugin binary is (package data).

setup.py compiles `cni/native/shoal_cni.c` into `shoal/cni/bin/shoal-cni`
when the package is built or installed (editable too). Everything that needs
the plugin — the installer, the local mesh, the tests, podman — takes it
from here (`shoal cni plugin-path` prints it).
"""

from __future__ import annotations

import os

PLUGIN_NAME = "shoal-cni"


class PluginMissing(FileNotFoundError):
    """The package was installed without building the plugin (no C compiler?)."""


def plugin_path() -> str:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", PLUGIN_NAME)
    if not os.access(path, os.X_OK):
        raise PluginMissing(
            f"the CNI plugin binary {path} is missing: reinstall shoal with gcc and libc6-dev "
            "present (`make venv`, or `pip install .`), which compiles cni/native/shoal_cni.c")
    return path


def plugin_dir() -> str:
    """A directory to put on CNI_PATH so runtimes find `shoal-cni`."""
    return os.path.dirname(plugin_path())
