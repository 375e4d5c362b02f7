"""Run a CNI plugin chain exactly as a container runtime does (libcni).

For each plugin of a conflist, libcni (`libcni/api.go buildOneConfig`)
injects the list's `name` and `cniVersion` into the plugin's own config,
adds `prevResult` (the previous plugin's result; none for the first ADD,
the cached final ADD result for DEL and CHECK), and executes the binary found
on CNI_PATH with CNI_* env vars and the config on stdin. ADD goes in list
order, DEL in reverse. The local mesh uses this to wire pods; tests use it to
drive `shoal-cni` behind the real `bridge` + `host-local` plugins.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

# libcni gives a plugin no deadline of its own (the kubelet's CRI call has
# 4 min); we bound each exec so a hung plugin fails the pod with a message.
PLUGIN_TIMEOUT_S = 30.0


class ChainError(Exception):
    """A plugin failed; carries the spec's error object."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"CNI {command} failed in plugin {plugin!r}: [{code}] {msg}"
                         + (f" ({details})" if details else ""))
        self.plugin, self.command, self.code, self.msg, self.details = plugin, command, code, msg, details


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    """What identifies one pod's attachment (libcni RuntimeConf)."""
    container_id: str
    netns: str
    ifname: str = "eth0"
    args: Mapping[str, str] | None = None      # K8S_POD_NAME, K8S_POD_NAMESPACE, ...


def plugin_config(conflist: Mapping[str, Any], plugin: Mapping[str, Any],
                  prev_result: Mapping[str, Any] | None) -> dict[str, Any]:
    """One plugin's stdin as libcni builds it (pure)."""
    conf = dict(plugin)
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist["cniVersion"]
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


def plugin_env(command: str, att: Attachment | None, cni_path: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_PATH": cni_path,
           "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    if att is not None:
        env.update({"CNI_CONTAINERID": att.container_id, "CNI_NETNS": att.netns,
                    "CNI_IFNAME": att.ifname,
                    "CNI_ARGS": ";".join(f"{k}={v}" for k, v in (att.args or {}).items())})
    return env


def find_plugin(kind: str, cni_path: str) -> str:
    for d in cni_path.split(":"):
        p = os.path.join(d, kind)
        if d and os.access(p, os.X_OK):
            return p
    raise ChainError(kind, "FIND", 7, f"plugin {kind!r} not found on CNI_PATH {cni_path!r}")


def exec_plugin(kind: str, command: str, conf: Mapping[str, Any], env: Mapping[str, str],
                cni_path: str, host_netns: str | None = None) -> dict[str, Any] | None:
    """Run one plugin; its parsed stdout (None when empty).

    `host_netns`: run the plugin in that netns (the "host" side of the pod's
    network, e.g. a mesh node), as a runtime living there would.
    """
    binary = find_plugin(kind, cni_path)
    argv = [binary] if host_netns is None else ["nsenter", f"--net={host_netns}", binary]
    try:
        r = subprocess.run(argv, input=orjson.dumps(conf), env=dict(env),
                           capture_output=True, timeout=PLUGIN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ChainError(kind, command, 999, f"plugin timed out after {PLUGIN_TIMEOUT_S:g} s") from None
    out = r.stdout.strip()
    if r.returncode != 0:
        # raw_exec.go: the error object is on stdout; stderr if stdout is empty.
        try:
            err = orjson.loads(out) if out else {}
        except orjson.JSONDecodeError:
            err = {}
        raise ChainError(kind, command, int(err.get("code", 999)),
                         str(err.get("msg") or r.stderr.decode(errors="replace").strip() or "failed"),
                         str(err.get("details", "")))
    return orjson.loads(out) if out else None


def add(conflist: Mapping[str, Any], att: Attachment, cni_path: str,
        host_netns: str | None = None) -> dict[str, Any]:
    """ADD through the whole chain; the final result (cache it for DEL/CHECK).

    On failure the attachment is DELeted (as the kubelet does) and ChainError
    raised.
    """
    result = None
    try:
        for plugin in conflist["plugins"]:
            result = exec_plugin(plugin["type"], "ADD", plugin_config(conflist, plugin, result),
                                 plugin_env("ADD", att, cni_path), cni_path, host_netns)
    except ChainError:
        delete(conflist, att, cni_path, None, host_netns)
        raise
    return result or {}


def delete(conflist: Mapping[str, Any], att: Attachment, cni_path: str,
           prev_result: Mapping[str, Any] | None, host_netns: str | None = None) -> list[ChainError]:
    """DEL in reverse order; every plugin runs even if one fails (best effort)."""
    errors = []
    for plugin in reversed(conflist["plugins"]):
        try:
            exec_plugin(plugin["type"], "DEL", plugin_config(conflist, plugin, prev_result),
                        plugin_env("DEL", att, cni_path), cni_path, host_netns)
        except ChainError as e:
            errors.append(e)
    return errors


def check(conflist: Mapping[str, Any], att: Attachment, cni_path: str,
          prev_result: Mapping[str, Any], host_netns: str | None = None) -> None:
    for plugin in conflist["plugins"]:
        exec_plugin(plugin["type"], "CHECK", plugin_config(conflist, plugin, prev_result),
                    plugin_env("CHECK", att, cni_path), cni_path, host_netns)


def status(conflist: Mapping[str, Any], cni_path: str) -> None:
    for plugin in conflist["plugins"]:
        if plugin["type"] == "shoal-cni":      # the standard plugins predate STATUS
            exec_plugin(plugin["type"], "STATUS", plugin_config(conflist, plugin, None),
                        plugin_env("STATUS", None, cni_path), cni_path)


def conflist(name: str, *, bridge: str, subnet: str, gateway: str, ipam_dir: str,
             agent_run_dir: str = "", exclude_namespaces: tuple[str, ...] = (),
             version: str = "1.0.0", shoal: bool = True) -> dict[str, Any]:
    """bridge + host-local (+ shoal-cni, as `shoal cni install` chains it)."""
    conf: dict[str, Any] = {
        "cniVersion": version, "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": ipam_dir,
                      "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
        ],
    }
    if shoal:
        conf["plugins"].append({"type": "shoal-cni", "cni_agent_run_dir": agent_run_dir,
                                "exclude_namespaces": list(exclude_namespaces)})
    return conf
