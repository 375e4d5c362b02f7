"""`shoal-cni`: the CNI plugin the container runtime runs, chained last.

It is thin, like istio-cni: parse and validate (`cni.spec`), ask the node
agent over its unix socket (`cni.protocol`), print `prevResult` unchanged.
The agent decides whether the pod is ambient; the plugin only enforces the
one rule that matters for safety: **an ADD the agent did not confirm fails**,
so the runtime tears the sandbox down and retries instead of starting an
application whose traffic would leave the pod uncaptured.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Mapping

from shoal.cni import protocol, spec
from shoal.cni.spec import CniError, Command, ErrorCode, Invocation

# How long the plugin waits for the agent. The agent installs nft rules
# (~tens of ms) and waits for ztunnel's ack (ZDS_ACK_TIMEOUT, 5 s as in
# Istio), so 10 s bounds a healthy ADD with margin while still failing well
# before the kubelet's 4 min CNI timeout, so the pod sandbox is retried.
AGENT_TIMEOUT_S = 10.0
# STATUS is a liveness probe of the agent; it must answer fast.
STATUS_TIMEOUT_S = 2.0


def _agent_socket(inv: Invocation) -> str:
    assert inv.config is not None
    return os.path.join(inv.config.agent_run_dir, protocol.SOCKET_NAME)


def call_agent(path: str, req: protocol.Request, timeout: float) -> protocol.Reply:
    """One request/reply with the node agent.

    Raises:
        OSError: the agent is unreachable or timed out.
        protocol.ProtocolError: it answered garbage.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(protocol.encode_request(req))
        reader = protocol.LineReader()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise protocol.ProtocolError("agent closed the connection without a reply")
            line = reader.feed(chunk)
            if line is not None:
                return protocol.decode_reply(line)


def _request(inv: Invocation, cmd: str) -> protocol.Request:
    prev = inv.config.prev_result if inv.config else None
    return protocol.Request(
        cmd=cmd, container_id=inv.container_id, netns=inv.netns, ifname=inv.ifname,
        pod_name=inv.pod_name, pod_namespace=inv.pod_namespace, pod_uid=inv.pod_uid,
        ips=tuple(spec.pod_ips(prev)))


def _add(inv: Invocation) -> bytes:
    assert inv.config is not None
    result = inv.config.prev_result or spec.empty_result(inv.version)
    if inv.pod_namespace and inv.pod_namespace in inv.config.exclude_namespaces:
        return spec.encode_result(result)
    path = _agent_socket(inv)
    try:
        reply = call_agent(path, _request(inv, "add"), AGENT_TIMEOUT_S)
    except (OSError, protocol.ProtocolError) as e:
        # Code 11: the runtime retries the sandbox; the pod never runs uncaptured.
        raise CniError(ErrorCode.TRY_AGAIN_LATER, "node agent unreachable; pod not started",
                       f"{path}: {e}; is `shoal node-agent run` up on this node?") from None
    if not reply.ok:
        raise CniError(reply.code or ErrorCode.AGENT_REFUSED,
                       "node agent did not enroll the pod", reply.error)
    return spec.encode_result(result)


def _del(inv: Invocation) -> bytes:
    # Best effort and idempotent (SPEC.md DEL): the agent reconciles pods
    # whose netns vanished when it comes back, so an absent agent is fine.
    try:
        call_agent(_agent_socket(inv), _request(inv, "del"), AGENT_TIMEOUT_S)
    except (OSError, protocol.ProtocolError):
        pass
    return b""


def _check(inv: Invocation) -> bytes:
    path = _agent_socket(inv)
    try:
        reply = call_agent(path, _request(inv, "check"), AGENT_TIMEOUT_S)
    except (OSError, protocol.ProtocolError) as e:
        raise CniError(ErrorCode.TRY_AGAIN_LATER, "node agent unreachable", f"{path}: {e}") from None
    if not reply.ok:
        raise CniError(reply.code or ErrorCode.REDIRECTION_MISSING,
                       "pod capture is not in place", reply.error)
    return b""


def _status(inv: Invocation) -> bytes:
    path = _agent_socket(inv)
    try:
        reply = call_agent(path, protocol.Request(cmd="status"), STATUS_TIMEOUT_S)
    except (OSError, protocol.ProtocolError) as e:
        raise CniError(ErrorCode.NOT_AVAILABLE, "node agent not available", f"{path}: {e}") from None
    if not reply.ok:
        raise CniError(ErrorCode.NOT_AVAILABLE, "node agent not ready", reply.error)
    return b""


def _gc(inv: Invocation) -> bytes:
    assert inv.config is not None
    valid = tuple(spec.gc_valid_attachments(inv.config))
    try:
        call_agent(_agent_socket(inv), protocol.Request(cmd="gc", valid=valid), AGENT_TIMEOUT_S)
    except (OSError, protocol.ProtocolError):
        pass   # GC is advisory; the agent also reconciles on its own
    return b""


_HANDLERS = {Command.ADD: _add, Command.DEL: _del, Command.CHECK: _check,
             Command.STATUS: _status, Command.GC: _gc,
             Command.VERSION: lambda inv: spec.encode_version_info()}


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """One plugin run: (exit status, stdout bytes). No printing, for tests."""
    version = spec.LATEST_VERSION
    try:
        inv = spec.parse_invocation(env, stdin)
        version = inv.version
        return 0, _HANDLERS[inv.command](inv)
    except CniError as e:
        return 1, spec.encode_error(e, version)
    except Exception as e:  # noqa: BLE001 - a plugin must always answer in spec form
        return 1, spec.encode_error(CniError(ErrorCode.INTERNAL, "internal error",
                                             f"{type(e).__name__}: {e}"), version)


def main() -> None:
    stdin = sys.stdin.buffer.read(spec.MAX_CONFIG_BYTES + 1)
    status, out = run(os.environ, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
