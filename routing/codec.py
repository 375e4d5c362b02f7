"""Encoding of table values: records and index payloads <-> bytes (orjson).

Pure. The record type is implied by the key prefix (routing/index.py), so the
bytes carry only the record's fields. Encoding is deterministic (sorted keys)
so the writer can diff two encoded key spaces byte for byte.
"""

from __future__ import annotations

from typing import Any

import orjson

from routing.index import INDEX_PREFIX, PREFIX_KIND
from routing.records import RECORD_TYPES, from_dict

# int keys (Workload.services port maps) need OPT_NON_STR_KEYS; sorted keys
# make equal records encode to equal bytes.
_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS


class CodecError(ValueError):
    """A stored value cannot be decoded (corrupt table or layout mismatch)."""


def encode_value(value: Any) -> bytes:
    """Bytes of a record (dataclass) or an index payload (str / list of str)."""
    return orjson.dumps(value, option=_OPTS)


def decode_value(key: str, data: bytes) -> Any:
    """The record or index payload stored under `key`."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"value of {key!r} is not valid JSON: {exc}") from None
    if key.startswith(INDEX_PREFIX):
        return raw
    kind = PREFIX_KIND.get(key[:2])
    if kind is None:
        raise CodecError(f"unknown key prefix in {key!r}")
    return from_dict(RECORD_TYPES[kind], raw)


def encode_keyspace(space: dict[str, Any]) -> dict[str, bytes]:
    return {k: encode_value(v) for k, v in space.items()}
