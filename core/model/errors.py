"""Config errors: each names the file, the resource and the field path.

Validation never stops at the first problem: parsers append `FieldError`s to
a list and the loader raises one `ConfigError` carrying all of them, so an
operator fixes a manifest in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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

    @property
    def resource(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind or '?'}/{ns}{self.name or '?'}"

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
