"""Kubernetes YAML -> `ConfigSet` (the config boundary).

Reads multi-document files, `kind: List` documents and directories of
`*.yaml` / `*.yml` (recursively, sorted, hidden files skipped), dispatches
each document by apiVersion/kind, collects every error, and raises one
`ConfigError` listing them all. Unknown kinds and Gateways of other classes
are skipped with a `Note`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import yaml

from shoal.core.constants import WAYPOINT_GATEWAY_CLASS
from shoal.core.model.errors import ConfigError, FieldError, quote
from shoal.core.model.fields import DNS_SUBDOMAIN, MAX_NAME_LEN, Ctx
from shoal.core.model.parse_authz import parse_authorization_policy
from shoal.core.model.parse_core import (parse_deployment, parse_endpoint_slice, parse_namespace, parse_pod,
                                   parse_service)
from shoal.core.model.parse_gateway import parse_gateway, parse_httproute
from shoal.core.model.parse_grpcroute import parse_grpcroute
from shoal.core.model.resources import ConfigSet, Gateway, Meta, Note, Resource

YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 16 * 1024 * 1024   # a config file larger than this is a mistake, not a mesh
# Nesting of YAML collections. Kubernetes manifests nest ~10-15 levels (an
# HTTPRoute's deepest field is at 8); libyaml and PyYAML's constructor recurse
# per level, so 1 MB of "[[[[..." would exhaust the C stack without a bound.
MAX_DEPTH = 64
# YAML aliases may repeat a subtree; the "billion laughs" (CVE-2019-11253 in
# kube-apiserver) nests them so a few hundred bytes expand to gigabytes. Like
# go-yaml's fix (an allowed ratio of alias-decoded nodes), a document may
# expand to at most ALIAS_EXPANSION times its own node count plus
# ALIAS_EXPANSION_SLACK nodes; real manifests that reuse a block stay far below.
ALIAS_EXPANSION = 10
ALIAS_EXPANSION_SLACK = 10_000

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# (kind, apiVersion) -> (parser, namespaced)
_PARSERS: dict[tuple[str, str], tuple[Callable, bool]] = {
    ("Namespace", "v1"): (parse_namespace, False),
    ("Pod", "v1"): (parse_pod, True),
    ("Service", "v1"): (parse_service, True),
    ("Deployment", "apps/v1"): (parse_deployment, True),
    ("EndpointSlice", "discovery.k8s.io/v1"): (parse_endpoint_slice, True),
    ("AuthorizationPolicy", "security.istio.io/v1"): (parse_authorization_policy, True),
    ("AuthorizationPolicy", "security.istio.io/v1beta1"): (parse_authorization_policy, True),
    ("Gateway", "gateway.networking.k8s.io/v1"): (parse_gateway, True),
    ("Gateway", "gateway.networking.k8s.io/v1beta1"): (parse_gateway, True),
    ("HTTPRoute", "gateway.networking.k8s.io/v1"): (parse_httproute, True),
    ("HTTPRoute", "gateway.networking.k8s.io/v1beta1"): (parse_httproute, True),
    ("GRPCRoute", "gateway.networking.k8s.io/v1"): (parse_grpcroute, True),
}
SUPPORTED_KINDS = tuple(sorted({k for k, _ in _PARSERS}))


def yaml_files(path: str | os.PathLike) -> list[Path]:
    """The config files under `path` (a file or a directory), sorted."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"config path {quote(str(root))} is neither a file nor a directory")
    out = [p for p in root.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()
           and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(out)


def load_dir(path: str | os.PathLike) -> ConfigSet:
    """Parse and validate every YAML file under `path`.

    Raises:
        ConfigError: with every problem found (file, resource, field).
        FileNotFoundError: `path` does not exist.
    """
    errors: list[FieldError] = []
    notes: list[Note] = []
    resources: list[Resource] = []
    for f in yaml_files(path):
        try:
            text = _read(f)
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(FieldError(file=str(f), kind="", namespace="", name="", field="",
                                     message=f"cannot read: {exc}"))
            continue
        resources += parse_text(text, file=str(f), errors=errors, notes=notes,
                                start_index=len(resources))
    return finish(resources, notes, errors)


def load_text(text: str, file: str = "") -> ConfigSet:
    """Parse and validate one YAML text (tests, stdin). Raises ConfigError."""
    errors: list[FieldError] = []
    notes: list[Note] = []
    return finish(parse_text(text, file=file, errors=errors, notes=notes), notes, errors)


def finish(resources: list[Resource], notes: list[Note], errors: list[FieldError]) -> ConfigSet:
    """Cross-resource checks (duplicates), then raise or return the ConfigSet."""
    seen: dict[tuple[str, str, str], Meta] = {}
    for r in resources:
        first = seen.setdefault(r.meta.key, r.meta)
        if first is not r.meta:
            errors.append(FieldError(file=r.meta.file, kind=r.meta.kind, namespace=r.meta.namespace,
                                     name=r.meta.name, field="metadata.name",
                                     message=f"duplicate {r.meta.ref}; first defined in {first.file}"))
    if errors:
        raise ConfigError(errors)
    return ConfigSet(resources=tuple(resources), notes=tuple(notes))


def _read(f: Path) -> str:
    if f.stat().st_size > MAX_FILE_BYTES:
        raise OSError(f"file is larger than {MAX_FILE_BYTES} bytes")
    return f.read_text(encoding="utf-8")


def parse_text(text: str, *, file: str, errors: list[FieldError], notes: list[Note],
               start_index: int = 0) -> list[Resource]:
    """Every supported resource of one multi-document YAML text."""
    try:
        check_shape(text)
        docs = list(yaml.load_all(text, Loader=_Loader))
    except YamlShapeError as exc:
        errors.append(FieldError(file=file, kind="", namespace="", name="", field="",
                                 message=str(exc)))
        return []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        errors.append(FieldError(file=file, kind="", namespace="", name="", field="",
                                 message=f"invalid YAML{where}: {problem}"))
        return []
    out: list[Resource] = []
    for n, doc in enumerate(docs):
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        for item in items or ():
            res = _parse_doc(item, file, n, errors, notes, start_index + len(out))
            if res is not None:
                out.append(res)
    return out


def parse_object(doc: object, *, file: str = "", index: int = 0
                 ) -> tuple[Resource | None, list[FieldError], list[Note]]:
    """One Kubernetes object (a decoded JSON/YAML mapping) through the same
    validation as a file's documents: (resource or None, its errors, its notes).
    The Kubernetes API source validates each watch event with it, alone."""
    errors: list[FieldError] = []
    notes: list[Note] = []
    res = _parse_doc(doc, file, 0, errors, notes, index)
    return (None if errors else res), errors, notes


class YamlShapeError(ValueError):
    """The YAML is too deep or its aliases expand too far (see MAX_DEPTH)."""


_STARTS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_ENDS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def check_shape(text: str) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH or whose aliases would expand
    past the ALIAS_EXPANSION bound, before anything is built from it.

    One pass over libyaml's events (iterative, no recursion): the size of each
    anchored node is known when it ends, so an alias adds that size.

    Raises:
        YamlShapeError: with the line of the offending node.
        yaml.YAMLError: the text is not YAML.
    """
    depth = nodes = expanded = 0
    anchors: dict[str, int] = {}
    open_nodes: list[tuple[str | None, int]] = []
    for event in yaml.parse(text, Loader=_Loader):
        kind = type(event)
        if kind is yaml.ScalarEvent:
            nodes += 1
            expanded += 1
            if event.anchor:
                anchors[event.anchor] = 1
        elif kind in _STARTS:
            nodes += 1
            expanded += 1
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlShapeError(f"YAML nested deeper than {MAX_DEPTH} levels at line "
                                     f"{event.start_mark.line + 1}")
            open_nodes.append((event.anchor, expanded - 1))
        elif kind in _ENDS:
            depth -= 1
            anchor, start = open_nodes.pop()
            if anchor:
                anchors[anchor] = expanded - start
        elif kind is yaml.AliasEvent:
            expanded += anchors.get(event.anchor, 1)
            if expanded > ALIAS_EXPANSION * nodes + ALIAS_EXPANSION_SLACK:
                raise YamlShapeError(
                    f"YAML aliases expand to more than {ALIAS_EXPANSION}x the document "
                    f"(alias *{event.anchor[:40]} at line {event.start_mark.line + 1}); "
                    f"write the repeated blocks out")


def _parse_doc(doc: object, file: str, n: int, errors: list[FieldError], notes: list[Note],
               index: int) -> Resource | None:
    if doc is None:
        return None
    ctx = Ctx(errors, file=file, document=n)
    if not isinstance(doc, dict):
        ctx.err("", f"a document must be a mapping with apiVersion and kind; got {type(doc).__name__}")
        return None
    kind = ctx.str(doc, "kind", "", required=True)
    api = ctx.str(doc, "apiVersion", "", required=True)
    ctx.kind = kind
    md = ctx.map(doc, "metadata", "", required=True)
    ctx.name = name = ctx.str(md, "name", "metadata", required=True)
    entry = _PARSERS.get((kind, api))
    if entry is None:
        if kind and api:
            notes.append(Note(file=file, resource=f"{kind}/{name}",
                              message=f"skipped: {api} {kind} is not used by shoal"))
        return None
    parser, namespaced = entry
    ctx.namespace = ns = (ctx.str(md, "namespace", "metadata") or "default") if namespaced else ""
    _check_name(ctx, name, "metadata.name")
    if ns:
        _check_name(ctx, ns, "metadata.namespace")
    meta = Meta(kind=kind, name=name, namespace=ns, labels=ctx.str_map(md, "labels", "metadata"),
                annotations=ctx.str_map(md, "annotations", "metadata"), file=file, index=index)
    res = parser(ctx, meta, doc)
    if isinstance(res, Gateway) and res.class_name != WAYPOINT_GATEWAY_CLASS:
        notes.append(Note(file=file, resource=meta.ref, message=f"skipped: gatewayClassName "
                          f"{quote(res.class_name)} is not {WAYPOINT_GATEWAY_CLASS!r} (not a waypoint)"))
        return None
    return res


def _check_name(ctx: Ctx, name: str, path: str) -> None:
    if name and (len(name) > MAX_NAME_LEN or not DNS_SUBDOMAIN.match(name)):
        ctx.err(path, f"{quote(name)} is not a valid name (lowercase letters, digits, '-' and '.', "
                f"at most {MAX_NAME_LEN} characters)")
