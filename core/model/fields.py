"""Typed field access that records every problem with its path.

`Ctx` belongs to one resource; its getters return a safe default after
recording a `FieldError`, so a parser keeps going and reports all errors.
"""

from __future__ import annotations

import builtins
import ipaddress
import re
from typing import Any

from shoal.core.model.errors import FieldError, quote
from shoal.core.regex import RegexError, compile_regex

# RFC 1123 label / subdomain, as Kubernetes validates object names.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_NAME_LEN = 253          # Kubernetes object name limit
MAX_LABEL_VALUE_LEN = 63    # Kubernetes label value limit
MAX_PORT = 65535


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Ctx:
    """Error sink plus typed getters for one resource.

    The getters are named after the types they return (`ctx.str`, `ctx.int`),
    which shadows those builtins in the class body: annotations after them
    spell `builtins.str`.
    """

    def __init__(self, errors: list[FieldError], *, file: str, document: int = 0,
                 kind: str = "", namespace: str = "", name: str = "") -> None:
        self.errors = errors
        self.file = file
        self.document = document
        self.kind, self.namespace, self.name = kind, namespace, name

    def err(self, path: str, message: str) -> None:
        self.errors.append(FieldError(file=self.file, document=self.document, kind=self.kind,
                                      namespace=self.namespace, name=self.name,
                                      field=path, message=message))

    # -- scalars ---------------------------------------------------------------
    def str(self, obj: dict, key: str, path: str, *, required: bool = False,
            default: str = "", choices: tuple[str, ...] | None = None) -> str:
        value = obj.get(key)
        where = join(path, key)
        if value is None:
            if required:
                self.err(where, "is required")
            return default
        if not isinstance(value, str):
            self.err(where, f"must be a string, got {type(value).__name__} {quote(value)}")
            return default
        if choices is not None and value not in choices:
            self.err(where, f"must be one of {', '.join(choices)}; got {quote(value)}")
            return default
        return value

    def int(self, obj: dict, key: builtins.str, path: builtins.str, *,
            required: builtins.bool = False, default: builtins.int = 0,
            lo: builtins.int | None = None, hi: builtins.int | None = None) -> builtins.int:
        value = obj.get(key)
        where = join(path, key)
        if value is None:
            if required:
                self.err(where, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.err(where, f"must be an integer, got {quote(value)}")
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.err(where, f"must be between {lo} and {hi}; got {value}")
            return default
        return value

    def port(self, obj: dict, key: builtins.str, path: builtins.str, *,
             required: builtins.bool = False) -> builtins.int:
        return self.int(obj, key, path, required=required, lo=1, hi=MAX_PORT)

    def bool(self, obj: dict, key: builtins.str, path: builtins.str,
             default: builtins.bool = False) -> builtins.bool:
        value = obj.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.err(join(path, key), f"must be true or false, got {quote(value)}")
            return default
        return value

    # -- containers ------------------------------------------------------------
    def map(self, obj: dict, key: builtins.str, path: builtins.str, *,
            required: builtins.bool = False) -> dict:
        value = obj.get(key)
        if value is None:
            if required:
                self.err(join(path, key), "is required")
            return {}
        if not isinstance(value, dict):
            self.err(join(path, key), f"must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def list(self, obj: dict, key: builtins.str, path: builtins.str, *,
             required: builtins.bool = False,
             max_items: builtins.int | None = None) -> builtins.list:
        value = obj.get(key)
        if value is None:
            if required:
                self.err(join(path, key), "is required")
            return []
        if not isinstance(value, list):
            self.err(join(path, key), f"must be a list, got {type(value).__name__}")
            return []
        if max_items is not None and len(value) > max_items:
            self.err(join(path, key), f"has {len(value)} items; at most {max_items} allowed")
        return value

    def maps(self, obj: dict, key: builtins.str, path: builtins.str,
             **kw: Any) -> builtins.list[tuple[builtins.str, dict]]:
        """A list of mappings as (item path, item) pairs; bad items are reported."""
        out = []
        for i, item in enumerate(self.list(obj, key, path, **kw)):
            where = join(join(path, key), i)
            if not isinstance(item, dict):
                self.err(where, f"must be a mapping, got {type(item).__name__}")
                continue
            out.append((where, item))
        return out

    def strs(self, obj: dict, key: builtins.str, path: builtins.str, *,
             required: builtins.bool = False) -> tuple[builtins.str, ...]:
        out = []
        for i, item in enumerate(self.list(obj, key, path, required=required)):
            if not isinstance(item, str):
                self.err(join(join(path, key), i), f"must be a string, got {quote(item)}")
                continue
            out.append(item)
        return tuple(out)

    def str_map(self, obj: dict, key: builtins.str, path: builtins.str) -> dict[builtins.str, builtins.str]:
        """Labels / annotations / matchLabels: str -> str (numbers are refused as K8s does)."""
        out = {}
        for k, v in self.map(obj, key, path).items():
            if not isinstance(k, str) or not isinstance(v, str):
                self.err(join(path, key) + f"[{quote(k)}]",
                         f"keys and values must be strings (quote numbers and booleans); got {quote(v)}")
                continue
            out[k] = v
        return out

    def known_keys(self, obj: dict, path: builtins.str, allowed: frozenset[builtins.str]) -> None:
        """Reject unknown fields (the API server would, and a typo must not be silent)."""
        for k in obj:
            if k not in allowed:
                self.err(join(path, str(k)), f"unknown field; expected one of {', '.join(sorted(allowed))}")

    # -- formats ---------------------------------------------------------------
    def ip(self, value: builtins.str, path: builtins.str) -> builtins.bool:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            self.err(path, f"{quote(value)} is not an IP address")
            return False
        return True

    def cidr(self, value: builtins.str, path: builtins.str) -> builtins.bool:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            self.err(path, f"{quote(value)} is not an IP address or CIDR block")
            return False
        return True

    def regex(self, value: builtins.str, path: builtins.str) -> builtins.bool:
        try:
            compile_regex(value)
        except RegexError as exc:
            self.err(path, f"regular expression {quote(value)} {exc}")
            return False
        return True


# Gateway API duration (GEP-2257): 1 to 4 groups of digits + unit, e.g. "1h30m", "500ms".
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(ctx: Ctx, value: Any, path: str) -> float | None:
    """Seconds of a Gateway API duration; None for "0s" (no timeout) or an error."""
    if not isinstance(value, str) or not _DURATION.match(value):
        ctx.err(path, f"must be a duration like \"10s\", \"500ms\" or \"1m30s\"; got {quote(value)}")
        return None
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    return seconds or None
