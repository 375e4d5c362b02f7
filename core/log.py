"""Logging: ztunnel's text format on stderr by default, JSON lines with
LOG_FORMAT=json (or --log-format json), as ztunnel; one logger tree under "shoal".

Access logs go to the "shoal.access" logger so operators can route or
silence them separately, like ztunnel's `access` tracing target.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson

LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "warn": logging.WARNING,
          "error": logging.ERROR, "off": logging.CRITICAL + 10}


class JsonFormatter(logging.Formatter):
    """One JSON object per line with ztunnel's keys (`level`, `time`, `scope`
    as in the text format, e.g. "access", `message`) plus `pid`;
    `extra={"fields": {...}}` adds keys."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "level": record.levelname.lower(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "scope": record.name.removeprefix("shoal."),
            "message": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if fields:
            for k, v in fields.items():
                # A field never replaces the line's own keys (an error dict
                # has its own "message"): it is kept as "field.<key>".
                out[f"field.{k}" if k in _RESERVED else k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


_RESERVED = frozenset({"level", "time", "scope", "message", "pid"})


class PlainFormatter(logging.Formatter):
    """ztunnel's text format (the default): time, level, scope, message,
    then `key=value` fields; addresses and numbers bare, other strings quoted,
    e.g. `... info access connection complete src.addr=10.0.0.1:5000
    src.workload="sleep" ... bytes_sent=67 duration="13ms"`."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        head = (f"{when}.{int(record.msecs):03d}000Z\t{record.levelname.lower()}\t"
                f"{record.name.removeprefix('shoal.')}\t{record.getMessage()}")
        fields = getattr(record, "fields", None) or {}
        parts = [f"{k}={_plain_value(k, v)}" for k, v in fields.items()]
        if record.exc_info:
            parts.append(f"exception={orjson.dumps(self.formatException(record.exc_info)).decode()}")
        return head + ("\t" + " ".join(parts) if parts else "")


def _plain_value(key: str, value: object) -> str:
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, str) and key.endswith("addr"):
        return value
    return orjson.dumps(value if isinstance(value, str) else str(value)).decode()


FORMATTERS = {"json": JsonFormatter, "plain": PlainFormatter}
DEFAULT_FORMAT = "plain"        # ztunnel's default; LOG_FORMAT=json for JSON lines


def setup(level: str | None = None, stream=None, fmt: str | None = None) -> None:
    """Configure the root "shoal" logger once per process (post-fork too)."""
    level = (level or os.environ.get("SHOAL_LOG_LEVEL") or os.environ.get("RUST_LOG")
             or "info").lower()
    default, scopes = parse_spec(level)
    root = logging.getLogger("shoal")
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = (fmt or os.environ.get("LOG_FORMAT") or DEFAULT_FORMAT).lower()
    if fmt not in FORMATTERS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {sorted(FORMATTERS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[fmt]())
    root.addHandler(handler)
    root.propagate = False
    apply_levels(default if default is not None else LEVELS["info"], scopes)


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"shoal.{name}")


def set_level(level: str) -> None:
    """Apply a level spec: "debug", or ztunnel's "access:debug,info" (see parse_spec)."""
    default, scopes = parse_spec(level)
    apply_levels(default, scopes)


# Scopes whose level can be set on their own (the "shoal.<scope>" loggers);
# the order is the wire order of the shared scope table (shards/heartbeat).
SCOPES = ("access", "admin", "ca", "cni", "hbone", "identity", "routing", "supervisor",
          "waypoint", "ztunnel", "tracing", "xds")
_NAMES = {v: k for k, v in LEVELS.items() if k != "warn"}


def parse_spec(spec: str) -> tuple[int | None, dict[str, int]]:
    """ztunnel's /logging grammar: comma-separated `level` or `scope:level`.

    Returns (default level or None, {scope: level}). Raises ValueError on an
    unknown level or scope.
    """
    default: int | None = None
    scopes: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in spec.lower().split(","))):
        scope, sep, level = item.rpartition(":")
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; use one of {sorted(LEVELS)}")
        if not sep:
            default = LEVELS[level]
        elif scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
        else:
            scopes[scope] = LEVELS[level]
    if default is None and not scopes:
        raise ValueError("empty level; use e.g. info or access:debug,info")
    return default, scopes


def apply_levels(default: int | None, scopes: dict[str, int]) -> None:
    """Set the root level (when given) and each scope's own level; scopes not
    named inherit again (ztunnel replaces the whole filter the same way)."""
    if default is not None:
        logging.getLogger("shoal").setLevel(default)
    for scope in SCOPES:
        logging.getLogger(f"shoal.{scope}").setLevel(scopes.get(scope, logging.NOTSET))


def scope_codes(scopes: dict[str, int]) -> bytes:
    """The scope table as bytes (one per SCOPES entry; 0 = inherit)."""
    return bytes(scopes.get(s, 0) for s in SCOPES)


def scopes_of(codes: bytes) -> dict[str, int]:
    return {s: c for s, c in zip(SCOPES, codes) if c}


def current_spec() -> str:
    """The levels in force, in ztunnel's syntax ("access:debug,info")."""
    root = logging.getLogger("shoal").level
    parts = [f"{s}:{_NAMES.get(lg.level, lg.level)}" for s in SCOPES
             if (lg := logging.getLogger(f"shoal.{s}")).level != logging.NOTSET]
    return ",".join(parts + [str(_NAMES.get(root, root))])
