"""Logging: JSON lines on stderr, one logger tree under "shoal".

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
    """One JSON object per line; `extra={"fields": {...}}` adds keys."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "scope": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup(level: str | None = None, stream=None) -> None:
    """Configure the root "shoal" logger once per process (post-fork too)."""
    level = (level or os.environ.get("SHOAL_LOG_LEVEL") or "info").lower()
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {sorted(LEVELS)}")
    root = logging.getLogger("shoal")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"shoal.{name}")


def set_level(level: str) -> None:
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {sorted(LEVELS)}")
    logging.getLogger("shoal").setLevel(LEVELS[level.lower()])
