"""The CA's signing root kept in a Kubernetes Secret, as istiod keeps
`istio-ca-secret`: a restarted (or rescheduled) CA finds the same root, so
every certificate it issued stays valid.

    restored = await restore_root(client, ns, name, state_dir)   # Secret -> files
    ca = store.load_or_create(state_dir, ...)                      # creates a root if none
    if not restored and not await save_root(client, ns, name, state_dir):
        await restore_root(...)        # another replica saved its root first: use that one

The CA also publishes its trust bundle in a ConfigMap (`publish_roots`), as
istiod publishes `istio-ca-root-cert`: the node proxies mount it to verify
the CA when they authenticate with a token instead of a node credential.
A plug-in CA (`cacerts`) needs neither: its files are the operator's Secret.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

# The state-dir files of a self-signed root (controlplane/store.py).
ROOT_FILES = ("root-cert.pem", "root-key.pem", "trust-bundle.pem")
PRIVATE = ("root-key.pem",)
HTTP_NOT_FOUND, HTTP_CONFLICT = 404, 409


def _code(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return getattr(status, "code", None)


async def restore_root(client: Any, namespace: str, name: str, state_dir: Path) -> bool:
    """Write the Secret's root files into `state_dir`; False when there is no Secret."""
    from lightkube.core.exceptions import ApiError
    from lightkube.resources.core_v1 import Secret
    try:
        secret = await client.get(Secret, name, namespace=namespace)
    except ApiError as e:
        if _code(e) == HTTP_NOT_FOUND:
            return False
        raise
    data = secret.data or {}
    missing = [f for f in ROOT_FILES if f not in data]
    if missing:
        raise ValueError(f"Secret {namespace}/{name} lacks {', '.join(missing)}")
    state_dir.mkdir(parents=True, exist_ok=True)
    for f in ROOT_FILES:
        _write(state_dir / f, base64.b64decode(data[f]), private=f in PRIVATE)
    return True


async def save_root(client: Any, namespace: str, name: str, state_dir: Path) -> bool:
    """Create the Secret from `state_dir`; False when another CA created it first."""
    from lightkube.core.exceptions import ApiError
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Secret
    data = {f: base64.b64encode((state_dir / f).read_bytes()).decode() for f in ROOT_FILES}
    secret = Secret(metadata=ObjectMeta(name=name, namespace=namespace,
                                        labels={"app.kubernetes.io/part-of": "shoal"}),
                    type="Opaque", data=data)
    try:
        await client.create(secret)
    except ApiError as e:
        if _code(e) == HTTP_CONFLICT:
            return False
        raise
    return True


async def publish_roots(client: Any, namespace: str, name: str, trust_bundle_pem: str) -> None:
    """Create or replace the ConfigMap `name` with `root-cert.pem`."""
    from lightkube.core.exceptions import ApiError
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import ConfigMap
    cm = ConfigMap(metadata=ObjectMeta(name=name, namespace=namespace,
                                       labels={"app.kubernetes.io/part-of": "shoal"}),
                   data={"root-cert.pem": trust_bundle_pem})
    try:
        await client.create(cm)
    except ApiError as e:
        if _code(e) != HTTP_CONFLICT:
            raise
        await client.replace(cm)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
