"""The node's certificate store: one copy of every workload certificate and
key, shared by all processes of one proxy (supervisor, workers, and the next
supervisor after SIGUSR2).

Why a memfd (memfd_create(2)):
- Keys never touch a disk: a memfd is anonymous memory with no path in any
  filesystem (unlike /dev/shm, where a name can be opened by any process
  with the file's permissions). It is reachable only through a file
  descriptor, i.e. by inheritance or through /proc/<pid>/fd, which the
  kernel guards with the same ptrace check as the process's own memory.
- It needs no extra process: the supervisor creates it before forking and
  keeps it; every worker inherits it with fork (restart, SIGHUP roll) and a
  new supervisor inherits it across exec (SIGUSR2), like the listeners. A
  cert daemon answering over SCM_RIGHTS would be one more process to
  supervise, and down exactly when a worker restarts.
- Workers read it with pread, so a growing store never remaps under a reader.

Format: HEADER (magic, generation, payload length) then the payload, an
orjson document {identity uri: {"key", "chain", "roots": PEM, "lease": [pid,
until]}}. Writers take a POSIX record lock (fcntl.lockf) on the whole file:
record locks belong to the process, so workers that share one inherited
open file description still exclude each other (flock(2) locks would not).

Leases make renewal once-per-node instead of once-per-worker: the worker
whose renewal comes due first claims the identity for LEASE_SECONDS and asks
the CA; the others find the new certificate in the store and adopt it.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from dataclasses import dataclass

import orjson
from cryptography.hazmat.primitives import serialization

from shoal.core.identity.certs import WorkloadCert, load_pem_certs
from shoal.core.pids import alive

ENV_FD = "SHOAL_CERT_STORE_FD"
MAGIC = b"shoalcs1"
HEADER = struct.Struct("<8sQQ")
# A claim outlives one CA request (CA_REQUEST_TIMEOUT is 10 s) with margin;
# a worker killed mid-request leaves a claim that expires after this.
LEASE_SECONDS = 15.0
# A node has at most a few hundred identities of ~3 KiB each; a store much
# larger than this is corrupt, not busy.
MAX_STORE_BYTES = 64 * 1024 * 1024


class StoreError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Busy:
    """Another live process is renewing this identity until `until` (unix time)."""
    until: float


class CertStore:
    """A memfd of certificates (see the module docstring).

    Args:
        fd: the memfd, owned by this object (closed by `close`).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._gen = 0     # the generation last read (a write stores the next one)

    @classmethod
    def create(cls) -> "CertStore":
        """Supervisor, before forking: a new empty store, exported in ENV_FD."""
        # CLOEXEC: only our own exec (SIGUSR2) passes it on, on purpose.
        fd = os.memfd_create("shoal-certs", os.MFD_CLOEXEC)
        store = cls(fd)
        store._write_locked({}, generation=0)
        os.environ[ENV_FD] = str(fd)
        return store

    @classmethod
    def inherited(cls) -> "CertStore | None":
        """The store named by ENV_FD (a worker, or a supervisor after SIGUSR2), if valid."""
        raw = os.environ.get(ENV_FD, "")
        if not raw.isdigit():
            return None
        store = cls(int(raw))
        try:
            store.generation()
        except (OSError, StoreError):
            return None
        return store

    @classmethod
    def adopt_or_create(cls) -> "CertStore":
        store = cls.inherited()
        if store is None:
            return cls.create()
        os.set_inheritable(store.fd, False)
        return store

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

    # -- reads ----------------------------------------------------------------
    def generation(self) -> int:
        return self._header()[0]

    def get(self, uri: str, now: float | None = None) -> WorkloadCert | None:
        """The stored certificate of `uri` if valid at `now`, else None."""
        with self._lock(fcntl.LOCK_SH):
            doc = self._read()
        return _valid(_decode(doc.get(uri)), time.time() if now is None else now)

    def all_valid(self, now: float | None = None) -> list[WorkloadCert]:
        with self._lock(fcntl.LOCK_SH):
            doc = self._read()
        now = time.time() if now is None else now
        return [c for c in (_valid(_decode(e), now) for e in doc.values()) if c is not None]

    # -- writes ---------------------------------------------------------------
    def claim(self, uri: str, newer_than: float, now: float | None = None) -> WorkloadCert | Busy | None:
        """Before asking the CA for `uri`: returns a valid certificate that
        expires after `newer_than` (someone renewed it: use that), or Busy
        (someone is renewing it now), or None (the caller now holds the
        lease and should ask the CA, then `put` or `release`)."""
        now = time.time() if now is None else now
        with self._lock(fcntl.LOCK_EX):
            doc = self._read()
            entry = doc.get(uri) or {}
            cert = _valid(_decode(entry), now)
            if cert is not None and cert.not_after.timestamp() > newer_than:
                return cert
            pid, until = entry.get("lease") or (0, 0.0)
            if pid != os.getpid() and until > now and alive(pid):
                return Busy(until)
            entry["lease"] = [os.getpid(), now + LEASE_SECONDS]
            doc[uri] = entry
            self._write_locked(doc)
        return None

    def put(self, cert: WorkloadCert) -> None:
        """Store a new certificate (and drop the lease)."""
        with self._lock(fcntl.LOCK_EX):
            doc = self._read()
            doc[cert.identity.uri] = _encode(cert)
            self._write_locked(doc)

    def release(self, uri: str) -> None:
        """Give up a lease (the CA request failed), keeping the certificate."""
        with self._lock(fcntl.LOCK_EX):
            doc = self._read()
            entry = doc.get(uri)
            if entry and (entry.get("lease") or [0])[0] == os.getpid():
                entry.pop("lease", None)
                if "key" not in entry:
                    del doc[uri]
                self._write_locked(doc)

    def forget(self, uri: str) -> None:
        with self._lock(fcntl.LOCK_EX):
            doc = self._read()
            if doc.pop(uri, None) is not None:
                self._write_locked(doc)

    # -- file -------------------------------------------------------------------
    def _lock(self, kind: int) -> "_Locked":
        return _Locked(self.fd, kind)

    def _header(self) -> tuple[int, int]:
        raw = os.pread(self.fd, HEADER.size, 0)
        if len(raw) < HEADER.size:
            raise StoreError("certificate store is truncated")
        magic, gen, length = HEADER.unpack(raw)
        if magic != MAGIC or length > MAX_STORE_BYTES:
            raise StoreError("not a shoal certificate store")
        return gen, length

    def _read(self) -> dict:
        gen, length = self._header()
        self._gen = gen
        if not length:
            return {}
        raw = os.pread(self.fd, length, HEADER.size)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise StoreError(f"certificate store is corrupt: {e}") from e

    def _write_locked(self, doc: dict, generation: int | None = None) -> None:
        payload = orjson.dumps(doc) if doc else b""
        if len(payload) > MAX_STORE_BYTES:
            raise StoreError("certificate store full")
        gen = self._gen + 1 if generation is None else generation
        os.pwrite(self.fd, HEADER.pack(MAGIC, gen, len(payload)) + payload, 0)
        os.ftruncate(self.fd, HEADER.size + len(payload))


class _Locked:
    __slots__ = ("fd", "kind")

    def __init__(self, fd: int, kind: int) -> None:
        self.fd, self.kind = fd, kind

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, self.kind)

    def __exit__(self, *exc) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)


def _encode(cert: WorkloadCert) -> dict:
    return {"key": cert.key_pem().decode(),
            "chain": cert.chain_pem(), "roots": cert.roots_pem()}


def _decode(entry: dict | None) -> WorkloadCert | None:
    if not entry or "key" not in entry:
        return None
    try:
        key = serialization.load_pem_private_key(entry["key"].encode(), password=None)
        chain = load_pem_certs(entry["chain"])
        return WorkloadCert.build(key, chain[0], chain[1:], load_pem_certs(entry["roots"]))
    except (ValueError, KeyError, IndexError):
        return None   # a bad entry is as good as none: the caller asks the CA


def _valid(cert: WorkloadCert | None, now: float) -> WorkloadCert | None:
    if cert is None:
        return None
    return cert if cert.not_before.timestamp() <= now < cert.not_after.timestamp() else None

