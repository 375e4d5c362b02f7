"""The plugin ↔ node-agent wire protocol, and the files they share. Pure.

The CNI plugin (`cni/native/shoal_cni.c`, a static binary) forwards the
runtime's whole request to the node agent and prints its answer, so the
protocol carries exactly what a CNI plugin receives and returns. One
exchange per connection on a unix stream socket
(`<cni_agent_run_dir>/pluginevent.sock`, Istio's name):

    request:  b"SHOAL/1 " + JSON object of the CNI_* variables + b"\\n" + stdin bytes
              (the plugin then shuts down its write side: EOF ends the request)
    reply:    b"SHOAL/1 " + exit status (decimal) + b"\\n" + the bytes to print

Istio's plugin POSTs JSON to `/cmdadd` over HTTP on the same kind of socket
and keeps the decision logic on its side; ours moves the logic into the agent
and keeps the framing to two header lines a C program writes without a
JSON encoder for the body.

Files in the same directory, for when the agent cannot answer:
- `enrollment` (SNAPSHOT_NAME): which namespaces and pods are ambient,
  written atomically by the agent whenever its view changes (`enroll.snapshot`).
- `pending/<container id>` (PENDING_DIR): the request of an ADD the plugin
  passed through while the agent was down; the agent replays it once back.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from shoal.cni.spec import MAX_CONFIG_BYTES

SOCKET_NAME = "pluginevent.sock"
SNAPSHOT_NAME = "enrollment"
SNAPSHOT_HEADER = "shoal-enrollment 1"
PENDING_DIR = "pending"
MAGIC = b"SHOAL/1 "
# The CNI_* variables are a handful of short strings; 64 KiB is generous and
# still bounds what a stray client can make the agent buffer.
MAX_ENV_BYTES = 64 * 1024
MAX_REQUEST_BYTES = len(MAGIC) + MAX_ENV_BYTES + 1 + MAX_CONFIG_BYTES
# A reply echoes prevResult (at most the config) or carries an error object.
MAX_REPLY_BYTES = MAX_CONFIG_BYTES + 4096
# An exit status is a byte.
MAX_STATUS = 255


class ProtocolError(ValueError):
    """A malformed request or reply."""


@dataclass(frozen=True, slots=True)
class Call:
    """One plugin run as the runtime made it: its CNI_* env and stdin."""
    env: dict[str, str]
    stdin: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    """What the plugin prints and the status it exits with."""
    status: int
    stdout: bytes


def _header(data: bytes, limit: int) -> tuple[bytes, bytes]:
    """(header after MAGIC, rest) of one message."""
    if len(data) > limit:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {limit}")
    if not data.startswith(MAGIC):
        raise ProtocolError(f"message does not start with {MAGIC!r}")
    head, sep, rest = data[len(MAGIC):].partition(b"\n")
    if not sep:
        raise ProtocolError("header line not terminated")
    return head, rest


def encode_call(call: Call) -> bytes:
    env = orjson.dumps(call.env)
    if len(env) > MAX_ENV_BYTES:
        raise ProtocolError(f"environment of {len(env)} bytes exceeds {MAX_ENV_BYTES}")
    return MAGIC + env + b"\n" + call.stdin


def decode_call(data: bytes) -> Call:
    head, stdin = _header(data, MAX_REQUEST_BYTES)
    if len(head) > MAX_ENV_BYTES:
        raise ProtocolError(f"environment exceeds {MAX_ENV_BYTES} bytes")
    try:
        env = orjson.loads(head)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"environment is not JSON: {e}") from None
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and k.startswith("CNI_") and isinstance(v, str) for k, v in env.items()):
        raise ProtocolError("environment must be an object of CNI_* strings")
    return Call(env=env, stdin=stdin)


def encode_answer(ans: Answer) -> bytes:
    if not 0 <= ans.status <= MAX_STATUS:
        raise ProtocolError(f"exit status {ans.status} out of 0..{MAX_STATUS}")
    return MAGIC + str(ans.status).encode() + b"\n" + ans.stdout


def decode_answer(data: bytes) -> Answer:
    head, stdout = _header(data, MAX_REPLY_BYTES)
    if not head.isdigit() or int(head) > MAX_STATUS:
        raise ProtocolError(f"bad exit status {head[:16]!r}")
    return Answer(status=int(head), stdout=stdout)
