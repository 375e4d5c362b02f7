"""Chaining shoal-cni into a node's CNI network config. Pure: names and bytes
in, names and bytes out (`cni.installer` does the file I/O).

Which file: the one the runtime uses. containerd (go-cni `loadFromConfDir`)
and CRI-O (ocicni) list `*.conf`, `*.conflist` and `*.json` in the config
directory, sort the names lexically and take the first; Istio's install-cni
does the same and skips files that do not parse (CRI-O skips them too), so a
malformed file is left alone and reported, never rewritten.

How: a `.conflist` gets our entry appended to `plugins` (replaced in place if
it is already there but differs). A single-plugin `.conf`/`.json` becomes a
list `{cniVersion, name, plugins: [the original, ours]}` written to
`<stem>.conflist`, and the original is removed, as Istio does (libcni reads a
list only from a `.conflist`). Bytes are canonical JSON with 2-space
indent; the installer keeps the original bytes so an uninstall restores the
file exactly; `remove` is the fallback when someone changed it since.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PLUGIN_TYPE = "shoal-cni"
EXTENSIONS = (".conf", ".conflist", ".json")
# Istio's installer skips anything larger; real configs are a few KiB.
MAX_CONF_BYTES = 1 << 20


class ConfError(ValueError):
    """A config file that is not a usable CNI network config."""


@dataclass(frozen=True, slots=True)
class Rewrite:
    """What to do to the directory: write `data` to `name`, then delete `remove`."""
    name: str
    data: bytes
    remove: str | None = None


def entry(*, agent_run_dir: str, exclude_namespaces: tuple[str, ...]) -> dict[str, Any]:
    """Our plugin config, Istio's key names."""
    return {"name": PLUGIN_TYPE, "type": PLUGIN_TYPE, "cni_agent_run_dir": agent_run_dir,
            "exclude_namespaces": list(exclude_namespaces)}


def candidates(names: list[str]) -> list[str]:
    """Config file names in the order the runtime considers them."""
    return sorted(n for n in names if n.endswith(EXTENSIONS) and not n.startswith("."))


def parse(name: str, data: bytes) -> dict[str, Any]:
    """The network config of one file, as a conflist dict.

    Raises:
        ConfError: not JSON, not an object, no plugins / no type, too big.
    """
    if len(data) > MAX_CONF_BYTES:
        raise ConfError(f"{name}: {len(data)} bytes exceeds {MAX_CONF_BYTES}")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfError(f"{name}: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfError(f"{name}: not a JSON object")
    if name.endswith(".conflist"):
        plugins = obj.get("plugins")
        if not isinstance(plugins, list) or not plugins or not all(
                isinstance(p, dict) and isinstance(p.get("type"), str) and p["type"] for p in plugins):
            raise ConfError(f"{name}: 'plugins' must be a non-empty list of objects with a 'type'")
        return obj
    if not isinstance(obj.get("type"), str) or not obj["type"]:
        raise ConfError(f"{name}: network type not found")
    return obj


def primary(files: dict[str, bytes]) -> tuple[str | None, list[str]]:
    """(the file the runtime uses, errors of the malformed files before it)."""
    errors = []
    for name in candidates(list(files)):
        try:
            parse(name, files[name])
        except ConfError as e:
            errors.append(str(e))
            continue
        return name, errors
    return None, errors


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, indent=2).encode() + b"\n"


def has_entry(name: str, data: bytes) -> bool:
    try:
        obj = parse(name, data)
    except ConfError:
        return False
    return name.endswith(".conflist") and any(p["type"] == PLUGIN_TYPE for p in obj["plugins"])


def insert(name: str, data: bytes, ours: dict[str, Any]) -> Rewrite | None:
    """Chain `ours` into the file; None when it is already there as wanted.

    Raises:
        ConfError: the file is not a usable config.
    """
    obj = parse(name, data)
    if not name.endswith(".conflist"):
        stem = name.rsplit(".", 1)[0]
        conflist = {"cniVersion": obj.get("cniVersion", "0.3.1"), "name": obj.get("name", stem),
                    "plugins": [obj, ours]}
        return Rewrite(name=stem + ".conflist", data=dumps(conflist), remove=name)
    plugins = obj["plugins"]
    mine = [i for i, p in enumerate(plugins) if p["type"] == PLUGIN_TYPE]
    if mine == [len(plugins) - 1] and plugins[-1] == ours:
        return None
    # Last in the chain (it needs prevResult's IPs); exactly one entry.
    others = [p for p in plugins if p["type"] != PLUGIN_TYPE]
    return Rewrite(name=name, data=dumps({**obj, "plugins": [*others, ours]}))


def remove(name: str, data: bytes) -> Rewrite | None:
    """Take our entry out again; None when it is not there. (When the
    installer still has the file's original bytes it restores those instead,
    byte for byte and under the original name.)"""
    obj = parse(name, data)
    if not name.endswith(".conflist"):
        return None
    plugins = obj["plugins"]
    others = [p for p in plugins if p["type"] != PLUGIN_TYPE]
    if len(others) == len(plugins):
        return None
    if not others:
        raise ConfError(f"{name}: holds only {PLUGIN_TYPE}; not a primary network to restore")
    return Rewrite(name=name, data=dumps({**obj, "plugins": others}))
