"""The plugin ↔ node-agent wire protocol, pure.

The CNI plugin is a short-lived process; the node agent owns every decision
(is this pod ambient? install its rules, hand its netns to ztunnel). They talk
over a unix stream socket (`<cni_agent_run_dir>/pluginevent.sock`, Istio's
name) with one request and one reply per connection, each a single JSON
object terminated by a newline. Istio POSTs JSON to `/cmdadd` over HTTP on the
same kind of socket; we keep the body and drop the HTTP envelope.

Request:  {"cmd": "add"|"del"|"check"|"status"|"gc", "container_id", "netns",
           "ifname", "pod_name", "pod_namespace", "pod_uid", "ips": [..],
           "valid": [[container_id, ifname], ..] (gc only)}
Reply:    {"ok": bool, "enrolled": bool, "code": int, "error": str}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

SOCKET_NAME = "pluginevent.sock"
# A request carries a pod's names and IPs, a GC request up to a node's worth
# of attachments (110 pods per node by Kubernetes' default, ~100 B each).
MAX_MESSAGE_BYTES = 256 * 1024
COMMANDS = frozenset({"add", "del", "check", "status", "gc"})


class ProtocolError(ValueError):
    """A malformed request or reply."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    cmd: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    ips: tuple[str, ...] = ()
    valid: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.cmd not in COMMANDS:
            raise ProtocolError(f"unknown command {self.cmd!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    ok: bool
    enrolled: bool = False
    code: int = 0
    error: str = ""


def _line(obj: dict[str, Any]) -> bytes:
    data = orjson.dumps(obj) + b"\n"
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def encode_request(req: Request) -> bytes:
    return _line({"cmd": req.cmd, "container_id": req.container_id, "netns": req.netns,
                  "ifname": req.ifname, "pod_name": req.pod_name,
                  "pod_namespace": req.pod_namespace, "pod_uid": req.pod_uid,
                  "ips": list(req.ips), "valid": [list(v) for v in req.valid]})


def encode_reply(rep: Reply) -> bytes:
    return _line({"ok": rep.ok, "enrolled": rep.enrolled, "code": rep.code, "error": rep.error})


def _load(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if not data.endswith(b"\n"):
        raise ProtocolError("truncated message (no terminating newline)")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message is not a JSON object")
    return obj


def _str(obj: dict[str, Any], key: str) -> str:
    v = obj.get(key, "")
    if not isinstance(v, str):
        raise ProtocolError(f"{key!r} must be a string")
    return v


def decode_request(data: bytes) -> Request:
    obj = _load(data)
    ips = obj.get("ips", [])
    valid = obj.get("valid", [])
    if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips):
        raise ProtocolError("'ips' must be a list of strings")
    if not isinstance(valid, list) or not all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
            for v in valid):
        raise ProtocolError("'valid' must be a list of [container_id, ifname]")
    return Request(cmd=_str(obj, "cmd"), container_id=_str(obj, "container_id"),
                   netns=_str(obj, "netns"), ifname=_str(obj, "ifname"),
                   pod_name=_str(obj, "pod_name"), pod_namespace=_str(obj, "pod_namespace"),
                   pod_uid=_str(obj, "pod_uid"), ips=tuple(ips),
                   valid=tuple((v[0], v[1]) for v in valid))


def decode_reply(data: bytes) -> Reply:
    obj = _load(data)
    ok, enrolled, code = obj.get("ok"), obj.get("enrolled", False), obj.get("code", 0)
    if not isinstance(ok, bool) or not isinstance(enrolled, bool) or not isinstance(code, int):
        raise ProtocolError("reply needs bool 'ok', bool 'enrolled', int 'code'")
    return Reply(ok=ok, enrolled=enrolled, code=code, error=_str(obj, "error"))


class LineReader:
    """Accumulates stream bytes until one newline-terminated message."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes | None:
        """Returns the complete message once its newline arrived, else None."""
        self._buf += data
        i = self._buf.find(b"\n")
        if i < 0:
            if len(self._buf) > MAX_MESSAGE_BYTES:
                raise ProtocolError(f"message exceeds {MAX_MESSAGE_BYTES} bytes")
            return None
        return bytes(self._buf[: i + 1])
