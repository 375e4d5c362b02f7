"""Encoding of table values: records and index payloads <-> bytes (orjson).

Pure. The record type is implied by the key prefix (routing/index.py), so the
bytes carry only the record's fields. Encoding is deterministic (sorted keys)
so the writer can diff two encoded key spaces byte for byte.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable

import orjson

from shoal.routing.index import INDEX_PREFIX, PREFIX_KIND
from shoal.core.records import RECORD_TYPES

# int keys (Workload.services port maps) need OPT_NON_STR_KEYS; sorted keys
# make equal records encode to equal bytes.
_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS


class CodecError(ValueError):
    """A stored value cannot be decoded (corrupt table or layout mismatch)."""


def encode_value(value: Any) -> bytes:
    """Bytes of a record (dataclass) or an index payload (str / list of str)."""
    return orjson.dumps(value, option=_OPTS)


def _converter(tp: Any) -> Callable[[Any], Any] | None:
    """A function turning orjson output back into type `tp` (None: use as is)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        opt = _converter(inner[0])
        if opt is None:
            return None
        return lambda v: None if v is None else opt(v)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decoder(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        conv = _converter(args[0])
        if conv is None:
            return tuple
        return lambda v: tuple(conv(x) for x in v)
    if origin is dict:
        kt, vt = typing.get_args(tp)
        kconv, vconv = _converter(kt), _converter(vt)
        if kconv is None and vconv is None:
            return None
        kconv, vconv = kconv or (lambda x: x), vconv or (lambda x: x)
        return lambda v: {kconv(k): vconv(x) for k, x in v.items()}
    if tp is int:
        return int
    if tp is float:
        return lambda v: None if v is None else float(v)
    return None


_DECODERS: dict[type, Callable[[dict], Any]] = {}


def _decoder(cls: type) -> Callable[[dict], Any]:
    """A compiled from_dict for one record type: per-field converters built once.

    Same result as `routing.records.from_dict`, an order of magnitude faster,
    which matters on a worker's cold cache after every generation change.
    """
    dec = _DECODERS.get(cls)
    if dec is not None:
        return dec
    plain: set[str] = set()
    special: dict[str, Callable[[Any], Any]] = {}

    def decode(data: dict) -> Any:
        kw = {k: v for k, v in data.items() if k in plain}
        for k, conv in special.items():
            if k in data:
                v = data[k]
                kw[k] = None if v is None else conv(v)
        return cls(**kw)

    # Registered before its fields are looked at: record types may nest
    # themselves (a backendRef's filter mirrors to a backendRef).
    _DECODERS[cls] = decode
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        conv = _converter(hints[f.name])
        if conv is None:
            plain.add(f.name)
        else:
            special[f.name] = conv
    return decode


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
    return _decoder(RECORD_TYPES[kind])(raw)


def encode_keyspace(space: dict[str, Any]) -> dict[str, bytes]:
    return {k: encode_value(v) for k, v in space.items()}
