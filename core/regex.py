"""Linear-time regular expressions for everything a user writes (HTTPRoute
RegularExpression path/header/query matches), with RE2 as Envoy does.

Python's `re` backtracks: `/api/(a+)+` against `/api/aaaa...ab` doubles its
time per character, and one request hung a waypoint worker until the
supervisor killed it. RE2 (google-re2, the library Envoy's safe_regex uses)
matches in time linear in the input and refuses what it cannot do so
(backreferences, lookaround). Validation and matching use the same engine,
so what `shoal config validate` accepts is exactly what the proxy runs.
"""

from __future__ import annotations

import functools

import re2

# Envoy refuses a regex whose compiled RE2 program is larger than this
# (runtime key re2.max_program_size.error_level, default 100): program size
# is what each match step costs, so this bounds CPU per byte matched.
MAX_PROGRAM_SIZE = 100
# A pattern longer than this is refused before RE2 sees it: route regexes
# are short, and the compile itself costs time and memory per character.
MAX_PATTERN_LENGTH = 1024


class RegexError(ValueError):
    """The pattern is not a regex the proxy will run; the message says why."""


def _options() -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False          # our error message is the report, not stderr
    return opts


_OPTIONS = _options()


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str):
    """The compiled RE2 pattern.

    Raises:
        RegexError: RE2 refuses it (the RE2 message is kept), it is too long,
            or its program is above MAX_PROGRAM_SIZE.
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise RegexError(f"is {len(pattern)} characters long, above {MAX_PATTERN_LENGTH}")
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        msg = e.args[0] if e.args else str(e)
        if isinstance(msg, bytes):
            msg = msg.decode("utf-8", "replace")
        raise RegexError(f"is not valid RE2 syntax: {msg}") from None
    if compiled.programsize > MAX_PROGRAM_SIZE:
        raise RegexError(f"compiles to an RE2 program of size {compiled.programsize}, above "
                         f"{MAX_PROGRAM_SIZE} (Envoy's limit); simplify it")
    return compiled


def fullmatch(pattern: str, value: str) -> bool:
    """Whether `value` matches `pattern` whole (Envoy safe_regex semantics);
    False for a pattern validation would refuse."""
    try:
        return compile_regex(pattern).fullmatch(value) is not None
    except RegexError:
        return False
