"""Config errors: each names the file, the resource and the field path.

Validation never stops at the first problem: parsers append `FieldError`s to
a list and the loader raises one `ConfigError` carrying all of them, so an
operator fixes a manifest in one pass.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

# A value quoted in an error message is cut to this many characters: a config
# value may be megabytes (or, through YAML aliases, a graph that prints as
# gigabytes); the message only has to let the operator find it.
MAX_QUOTED = 80
# Whole messages are capped too (they embed YAML parser text, names...).
MAX_MESSAGE = 1024

_REPR = reprlib.Repr()
_REPR.maxstring = MAX_QUOTED
_REPR.maxother = MAX_QUOTED
_REPR.maxlevel = 2
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4


def quote(value: Any) -> str:
    """`repr(value)` for an error message, bounded however large `value` is
    (reprlib stops at a few items per level), then cut to MAX_QUOTED."""
    text = _REPR.repr(value)
    if len(text) > MAX_QUOTED:
        text = text[:MAX_QUOTED - 3] + "..."
    return text


def _cut(text: str) -> str:
    """A name as written by the user, cut to MAX_QUOTED characters."""
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED - 3] + "..."


def clip(message: str) -> str:
    """`message` cut to MAX_MESSAGE characters."""
    if len(message) <= MAX_MESSAGE:
        return message
    return message[:MAX_MESSAGE - 30] + f"... ({len(message)} characters)"


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldError:
    """One problem in one field of one resource.

    Attributes:
        file: the YAML file (as given to the loader), "" for in-memory input.
        kind, namespace, name: the resource ("" when unknown, e.g. YAML syntax).
        field: the path inside the resource, e.g. `spec.ports[0].targetPort`.
        message: what is wrong and what is expected.
        document: 0-based index of the YAML document in its file.
    """
    file: str
    kind: str
    namespace: str
    name: str
    field: str
    message: str
    document: int = 0

    def __post_init__(self) -> None:
        if len(self.message) > MAX_MESSAGE:
            object.__setattr__(self, "message", clip(self.message))

    @property
    def resource(self) -> str:
        ns = f"{_cut(self.namespace)}/" if self.namespace else ""
        return f"{_cut(self.kind) or '?'}/{ns}{_cut(self.name) or '?'}"

    def __str__(self) -> str:
        where = f"{self.file or '<input>'}"
        if self.document:
            where += f" (document {self.document + 1})"
        field = f" {self.field}:" if self.field else ":"
        return f"{where}: {self.resource}{field} {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "document": self.document, "resource": self.resource,
                "kind": self.kind, "namespace": self.namespace, "name": self.name,
                "field": self.field, "message": self.message}


class ConfigError(Exception):
    """A config was refused; `errors` lists every problem found."""

    code = "CONFIG_INVALID"

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        head = f"{len(self.errors)} config error(s)"
        super().__init__(head + ":\n" + "\n".join(f"  {e}" for e in self.errors))
