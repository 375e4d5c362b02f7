"""The CNI contract (containernetworking/cni SPEC.md 1.1.0), pure.

A CNI plugin is an executable: the runtime passes the network config as JSON
on stdin and the parameters in `CNI_*` environment variables, and reads the
result (or an error object) from stdout. This module turns (env, stdin) into
a validated `Invocation` and results/errors into the exact bytes to print.
No I/O: the node agent runs it for the plugin binary (`cni.plugin`).

Rules (SPEC.md sections "Parameters", "Result", "Error"):
- ADD, CHECK need CONTAINERID, NETNS, IFNAME; DEL needs CONTAINERID, IFNAME
  (NETNS may be empty: the sandbox can be gone already); VERSION, STATUS and GC
  need only COMMAND.
- A chained plugin must pass `prevResult` on unchanged (or amended): we never
  amend it, so ADD prints the received object as it came.
- Errors are `{cniVersion, code, msg, details}` printed on stdout with a
  non-zero exit, as libcni's `skel` does (the spec text says stderr, but
  `invoke/raw_exec.go` reads stdout first).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

# The versions whose config/result shapes we accept; a chained plugin that
# echoes prevResult needs nothing version-specific beyond the name check.
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
# CHECK exists since 0.4.0; STATUS and GC since 1.1.0 (SPEC.md "Version").
_MIN_VERSION = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}

# Bound on the stdin config: libcni configs are a few KiB; a runaway writer
# must not make the plugin buffer without limit.
MAX_CONFIG_BYTES = 1 << 20

# GC attachment keys: spec-v1.1.0 says `cni.dev/attachments`; libcni sends
# `cni.dev/valid-attachments` too (containernetworking/cni#1101).
GC_ATTACHMENT_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")
# Where the node agent's socket is when the plugin config does not say.
DEFAULT_AGENT_RUN_DIR = "/var/run/shoal-cni"


class Command(enum.Enum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    STATUS = "STATUS"
    VERSION = "VERSION"
    GC = "GC"


class ErrorCode(enum.IntEnum):
    """SPEC.md "Error" well-known codes, plus libcni's 8 and 999."""
    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    INVALID_NETNS = 8
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    INTERNAL = 999
    # 100+ are plugin-specific.
    AGENT_REFUSED = 100          # the node agent answered but did not enroll the pod
    REDIRECTION_MISSING = 101    # CHECK: the pod's capture rules are not in place


class CniError(Exception):
    """An error the plugin reports to the runtime as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details


_REQUIRED_ENV = {
    Command.ADD: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.CHECK: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.DEL: ("CNI_CONTAINERID", "CNI_IFNAME"),
    Command.STATUS: (),
    Command.VERSION: (),
    Command.GC: (),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginConfig:
    """Our entry in the conflist, validated. Unknown keys are kept in `raw`."""
    cni_version: str
    name: str
    type: str
    # Directory holding the node agent's `pluginevent.sock` (Istio's key name).
    agent_run_dir: str = DEFAULT_AGENT_RUN_DIR
    # Namespaces whose pods are never sent to the agent (the mesh's own pods).
    exclude_namespaces: tuple[str, ...] = ()
    prev_result: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Invocation:
    """One plugin run: the command, its parameters and the config."""
    command: Command
    config: PluginConfig | None      # None for VERSION without stdin
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_uid(self) -> str:
        return self.args.get("K8S_POD_UID", "")

    @property
    def version(self) -> str:
        return self.config.cni_version if self.config else LATEST_VERSION


def _vtuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def parse_cni_args(value: str) -> dict[str, str]:
    """`K=V;K2=V2` (SPEC.md CNI_ARGS). Raises CniError(4) on a malformed pair."""
    out: dict[str, str] = {}
    for pair in value.split(";"):
        if not pair:
            continue
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise CniError(ErrorCode.INVALID_ENV, "invalid CNI_ARGS",
                           f"pair {pair!r} is not KEY=VALUE")
        out[key] = val
    return out


def parse_config(stdin: bytes) -> PluginConfig:
    """Decode and validate the network config our plugin receives."""
    if len(stdin) > MAX_CONFIG_BYTES:
        raise CniError(ErrorCode.DECODE_FAILURE, "network config too large",
                       f"{len(stdin)} bytes > {MAX_CONFIG_BYTES}")
    try:
        raw = orjson.loads(stdin)
    except orjson.JSONDecodeError as e:
        raise CniError(ErrorCode.DECODE_FAILURE, "cannot decode network config", str(e)) from None
    if not isinstance(raw, dict):
        raise CniError(ErrorCode.DECODE_FAILURE, "network config is not a JSON object")
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ErrorCode.INVALID_CONFIG, "cniVersion missing from network config")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ErrorCode.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}")
    for key in ("name", "type"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise CniError(ErrorCode.INVALID_CONFIG, f"network config needs a string {key!r}")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ErrorCode.INVALID_CONFIG, "prevResult must be an object")
    excl = raw.get("exclude_namespaces", [])
    if not isinstance(excl, list) or not all(isinstance(x, str) for x in excl):
        raise CniError(ErrorCode.INVALID_CONFIG, "exclude_namespaces must be a list of strings")
    run_dir = raw.get("cni_agent_run_dir", DEFAULT_AGENT_RUN_DIR)
    if not isinstance(run_dir, str) or not run_dir:
        raise CniError(ErrorCode.INVALID_CONFIG, "cni_agent_run_dir must be a non-empty string")
    return PluginConfig(cni_version=version, name=raw["name"], type=raw["type"],
                        agent_run_dir=run_dir, exclude_namespaces=tuple(excl),
                        prev_result=prev, raw=raw)


def parse_invocation(env: Mapping[str, str], stdin: bytes) -> Invocation:
    """Validate the environment and stdin of one plugin run.

    Raises:
        CniError: with the spec's code (4 env, 6 decode, 7 config, 1 version).
    """
    name = env.get("CNI_COMMAND", "")
    try:
        command = Command(name)
    except ValueError:
        raise CniError(ErrorCode.INVALID_ENV, "unknown CNI_COMMAND",
                       f"got {name!r}, want one of {[c.value for c in Command]}") from None
    missing = [k for k in _REQUIRED_ENV[command] if not env.get(k)]
    if missing:
        raise CniError(ErrorCode.INVALID_ENV, f"required env variables {missing} missing")
    config = None
    # VERSION: libcni sends only {"cniVersion": ...} (no name/type), and the
    # answer does not depend on it, so stdin is not validated.
    if command is not Command.VERSION:
        config = parse_config(stdin)
        need = _MIN_VERSION.get(command.value)
        if need and _vtuple(config.cni_version) < _vtuple(need):
            raise CniError(ErrorCode.INCOMPATIBLE_VERSION,
                           f"{command.value} needs cniVersion >= {need}",
                           f"config is {config.cni_version!r}")
    return Invocation(
        command=command, config=config,
        container_id=env.get("CNI_CONTAINERID", ""), netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""), args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p))


def gc_valid_attachments(config: PluginConfig) -> list[tuple[str, str]]:
    """(containerID, ifname) pairs still in use, from a GC config."""
    for key in GC_ATTACHMENT_KEYS:
        items = config.raw.get(key)
        if isinstance(items, list):
            return [(str(a.get("containerID", "")), str(a.get("ifname", "")))
                    for a in items if isinstance(a, dict)]
    return []


def pod_ips(prev_result: Mapping[str, Any] | None) -> list[str]:
    """The pod's addresses (without prefix length) from a prevResult."""
    if not prev_result:
        return []
    out = []
    for entry in prev_result.get("ips", ()) or ():
        if isinstance(entry, dict) and isinstance(entry.get("address"), str):
            out.append(entry["address"].split("/", 1)[0])
    return out


# --------------------------------------------------------------------------
# Output bytes

def encode_error(err: CniError, version: str = LATEST_VERSION) -> bytes:
    obj: dict[str, Any] = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        obj["details"] = err.details
    return orjson.dumps(obj) + b"\n"


def encode_result(result: Mapping[str, Any]) -> bytes:
    return orjson.dumps(result) + b"\n"


def encode_version_info() -> bytes:
    return orjson.dumps({"cniVersion": LATEST_VERSION,
                         "supportedVersions": list(SUPPORTED_VERSIONS)}) + b"\n"


def empty_result(version: str) -> dict[str, Any]:
    """What an ADD prints when it got no prevResult (first in a chain)."""
    return {"cniVersion": version, "interfaces": [], "ips": [], "routes": [], "dns": {}}
