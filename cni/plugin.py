"""The CNI plugin's logic, run inside the node agent.

The binary the runtime executes (`shoal-cni`, `cni/native/shoal_cni.c`) only
forwards its environment and stdin here (`cni.protocol`) and prints what
comes back, as Istio's plugin forwards to its agent. So version negotiation,
validation (`cni.spec`), the namespace exclusions and the prevResult
passthrough all happen in Python, in one place, and the binary needs no
Python on the node.

The one rule that matters for safety: **an ADD for an ambient pod that the
agent did not capture fails**, so the runtime tears the sandbox down and
retries instead of starting an application whose traffic would leave the
pod uncaptured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping

from shoal.cni import spec
from shoal.cni.spec import CniError, Command, ErrorCode, Invocation

# Namespaces never captured whatever the config or labels say (Istio
# excludes kube-system too); the plugin binary checks the same name.
ALWAYS_EXCLUDED = frozenset({"kube-system"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PodOp:
    """What the agent does for one CNI command."""
    cmd: str                       # add | del | check | status | gc
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    ips: tuple[str, ...] = ()
    valid: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class OpResult:
    ok: bool
    enrolled: bool = False
    code: int = 0
    error: str = ""


Handler = Callable[[PodOp], Awaitable[OpResult]]


def excluded(inv: Invocation) -> bool:
    ns = inv.pod_namespace
    return bool(ns) and (ns in ALWAYS_EXCLUDED
                         or (inv.config is not None and ns in inv.config.exclude_namespaces))


def _op(inv: Invocation, cmd: str) -> PodOp:
    prev = inv.config.prev_result if inv.config else None
    return PodOp(cmd=cmd, container_id=inv.container_id, netns=inv.netns, ifname=inv.ifname,
                 pod_name=inv.pod_name, pod_namespace=inv.pod_namespace,
                 ips=tuple(spec.pod_ips(prev)))


async def _add(inv: Invocation, handle: Handler) -> bytes:
    assert inv.config is not None
    result = inv.config.prev_result or spec.empty_result(inv.version)
    if not excluded(inv):
        res = await handle(_op(inv, "add"))
        if not res.ok:
            raise CniError(res.code or ErrorCode.AGENT_REFUSED,
                           "node agent did not enroll the pod", res.error)
    return spec.encode_result(result)


async def _del(inv: Invocation, handle: Handler) -> bytes:
    # Best effort and idempotent (SPEC.md DEL).
    await handle(_op(inv, "del"))
    return b""


async def _check(inv: Invocation, handle: Handler) -> bytes:
    if not excluded(inv):
        res = await handle(_op(inv, "check"))
        if not res.ok:
            raise CniError(res.code or ErrorCode.REDIRECTION_MISSING,
                           "pod capture is not in place", res.error)
    return b""


async def _status(inv: Invocation, handle: Handler) -> bytes:
    res = await handle(PodOp(cmd="status"))
    if not res.ok:
        raise CniError(ErrorCode.NOT_AVAILABLE, "node agent not ready", res.error)
    return b""


async def _gc(inv: Invocation, handle: Handler) -> bytes:
    assert inv.config is not None
    await handle(PodOp(cmd="gc", valid=tuple(spec.gc_valid_attachments(inv.config))))
    return b""


async def _version(inv: Invocation, handle: Handler) -> bytes:
    return spec.encode_version_info()


_COMMANDS = {Command.ADD: _add, Command.DEL: _del, Command.CHECK: _check,
             Command.STATUS: _status, Command.GC: _gc, Command.VERSION: _version}


async def serve(handle: Handler, env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """One plugin run: (exit status, stdout bytes), as the binary must print them."""
    version = spec.LATEST_VERSION
    is_del = env.get("CNI_COMMAND") == Command.DEL.value
    try:
        inv = spec.parse_invocation(env, stdin)
        version = inv.version
        return 0, await _COMMANDS[inv.command](inv, handle)
    except CniError as e:
        out = spec.encode_error(e, version)
    except Exception as e:  # noqa: BLE001 - a plugin must always answer in spec form
        out = spec.encode_error(CniError(ErrorCode.INTERNAL, "internal error",
                                         f"{type(e).__name__}: {e}"), version)
    # A DEL always succeeds: the runtime could otherwise never free the sandbox.
    return (0, b"") if is_del else (1, out)
