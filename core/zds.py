"""ZDS (ztunnel discovery service) messages, sans-IO.

The node agent hands enrolled pods' network namespaces to ztunnel over a
SOCK_SEQPACKET unix socket; one datagram is one message, so there is no
framing. Istio encodes protobuf (`zds.proto`); both ends here are shoal, so
each message is a compact orjson object with the same semantics:

  ztunnel → agent   {"type":"hello","version":1,"instance":I}
  agent → ztunnel   {"type":"add","uid":U,"workload_info":{name,namespace,service_account},
                     "netns_path":P}      + exactly one fd (the pod netns) in SCM_RIGHTS
                    {"type":"keep","uid":U}          (snapshot only: netns unavailable)
                    {"type":"snapshot_sent"}         (ztunnel drops pods not announced)
                    {"type":"del","uid":U}
  ztunnel → agent   {"type":"ack","error":""}        (every agent message, in order)

`netns_path` is our addition (may be ""): a path the ztunnel may reopen, e.g.
from forked workers. `instance` is our addition too: every worker process of
one ztunnel opens its own connection (each builds its own SO_REUSEPORT
listeners in the pod), so connections saying the same instance form one
ztunnel; Istio's "adds to the newest ztunnel" then means to every
connection of the newest instance. Every other rule is Istio's: add carries exactly one fd,
nothing else carries any, truncated datagrams (MSG_TRUNC / MSG_CTRUNC) are
refused, keep is only valid before snapshot_sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import orjson

VERSION = 1
# ztunnel reads ZDS into a 1024-byte buffer (inpod/linux/protocol.rs); our
# JSON is wordier than protobuf, so allow 4 KiB. Kubernetes names are at most
# 253 + 63 + 253 bytes, so a real add stays far below it.
MAX_MESSAGE_BYTES = 4096
# Exactly one fd per add (Istio: "expected exactly one fd"); the receive
# buffer makes room for a few so an over-sending peer is detected, not cut.
MAX_FDS = 4


class ZdsError(Exception):
    """A malformed, truncated or out-of-order ZDS message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadInfo:
    name: str
    namespace: str
    service_account: str = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    version: int = VERSION
    instance: str = ""        # "" = a ztunnel of its own


@dataclass(frozen=True, slots=True, kw_only=True)
class Add:
    uid: str
    info: WorkloadInfo
    netns_path: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Keep:
    uid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Del:
    uid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotSent:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    error: str = ""


Message = Union[Hello, Add, Keep, Del, SnapshotSent, Ack]


def encode(msg: Message) -> bytes:
    """The datagram for `msg` (an Add's fd travels beside it, not in it)."""
    if isinstance(msg, Hello):
        obj = {"type": "hello", "version": msg.version, "instance": msg.instance}
    elif isinstance(msg, Add):
        obj = {"type": "add", "uid": msg.uid, "netns_path": msg.netns_path,
               "workload_info": {"name": msg.info.name, "namespace": msg.info.namespace,
                                 "service_account": msg.info.service_account}}
    elif isinstance(msg, (Keep, Del)):
        obj = {"type": "keep" if isinstance(msg, Keep) else "del", "uid": msg.uid}
    elif isinstance(msg, SnapshotSent):
        obj = {"type": "snapshot_sent"}
    elif isinstance(msg, Ack):
        obj = {"type": "ack", "error": msg.error}
    else:
        raise TypeError(f"not a ZDS message: {msg!r}")
    data = orjson.dumps(obj)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ZdsError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def fds_expected(msg: Message) -> int:
    return 1 if isinstance(msg, Add) else 0


def _str(obj: dict, key: str, *, required: bool = True) -> str:
    v = obj.get(key, None if required else "")
    if not isinstance(v, str) or (required and not v):
        raise ZdsError(f"field {key!r} must be a non-empty string")
    return v


def decode(data: bytes, nfds: int = 0, *, truncated: bool = False) -> Message:
    """Parse one datagram that arrived with `nfds` descriptors.

    Raises:
        ZdsError: truncated, malformed, or the wrong number of fds for its type
        (the caller closes any fds it received).
    """
    if truncated:
        raise ZdsError("truncated message (MSG_TRUNC or MSG_CTRUNC)")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ZdsError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ZdsError(f"not a ZDS message: {e}") from None
    if not isinstance(obj, dict):
        raise ZdsError("not a ZDS message: not an object")
    kind = obj.get("type")
    if kind == "hello":
        version = obj.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ZdsError("hello needs an integer version")
        msg: Message = Hello(version=version, instance=_str(obj, "instance", required=False))
    elif kind == "add":
        info = obj.get("workload_info")
        if not isinstance(info, dict):
            raise ZdsError("add needs workload_info")
        msg = Add(uid=_str(obj, "uid"), netns_path=_str(obj, "netns_path", required=False),
                  info=WorkloadInfo(name=_str(info, "name"), namespace=_str(info, "namespace"),
                                    service_account=_str(info, "service_account", required=False)
                                    or "default"))
    elif kind in ("keep", "del"):
        msg = (Keep if kind == "keep" else Del)(uid=_str(obj, "uid"))
    elif kind == "snapshot_sent":
        msg = SnapshotSent()
    elif kind == "ack":
        msg = Ack(error=_str(obj, "error", required=False))
    else:
        raise ZdsError(f"unknown message type {kind!r}")
    if nfds != fds_expected(msg):
        raise ZdsError(f"{kind} must carry exactly {fds_expected(msg)} fd(s), got {nfds}")
    return msg


class ClientState:
    """ztunnel-side ordering rules: keep only before the snapshot completes."""

    def __init__(self) -> None:
        self.snapshot_done = False

    def check(self, msg: Message) -> None:
        """Raises ZdsError when `msg` may not arrive now."""
        if isinstance(msg, (Hello, Ack)):
            raise ZdsError(f"{type(msg).__name__} is not sent by the node agent")
        if isinstance(msg, Keep) and self.snapshot_done:
            raise ZdsError("keep after snapshot_sent")
        if isinstance(msg, SnapshotSent):
            self.snapshot_done = True
