"""`KubeSource`: the routing table's config source on a cluster (DESIGN.md).

Runs one Informer per kind (informer.py) on an asyncio loop in a background
thread; the watcher's thread reads the ObjectStore (store.py) under one lock:

    src = KubeSource(kubeconfig=None)     # in-cluster, else KUBECONFIG / ~/.kube/config
    src.start()
    src.wait_synced(timeout)              # every kind listed once (or known missing)
    cfg, extra = src.load()               # the whole validated config, once
    src.wait(timeout, wake) -> bool       # True when changes are pending
    changes = src.changes()               # upserts + deletes since the last call: O(change)

Only validated resources ever leave the store (invalid objects are refused
alone, store.py invariant 1); `refused()` and `health()` go into the table's
status so /config_dump shows them.

The waits take the watcher's `wake` fd (its signals' self-pipe): the
informers' loop watches it and notifies the condition the watcher waits on,
so a signal ends the wait at once without the watcher polling its flags.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from lightkube import AsyncClient, KubeConfig

from shoal.core.model import ConfigSet, FieldError, Pod
from shoal.routing.kube import SCHEME
from shoal.routing.kube.informer import Informer
from shoal.routing.kube.kinds import WATCHED, Kind
from shoal.routing.kube.store import Changes, Key, ObjectStore

# API requests other than watches: a list page of 500 pods is well under a
# second on a healthy API server; 30 s lets a loaded one answer.
REQUEST_TIMEOUT = 30.0


# Where the kubelet mounts a pod's service account (token, ca.crt, namespace).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def client_config(kubeconfig: str | None = None, *,
                  service_account: str = SERVICE_ACCOUNT_DIR) -> KubeConfig:
    """`kubeconfig` if given, else in-cluster (KUBERNETES_SERVICE_HOST and the
    service account's token and CA), else $KUBECONFIG, else ~/.kube/config."""
    if kubeconfig:
        return KubeConfig.from_file(kubeconfig)
    return KubeConfig.from_env(service_account=service_account)


def make_client(kubeconfig: str | None = None) -> AsyncClient:
    import httpx2
    return AsyncClient(config=client_config(kubeconfig), timeout=httpx2.Timeout(REQUEST_TIMEOUT),
                       field_manager="shoal")


class KubeSource:
    """The Kubernetes API as a config source (see module docstring)."""

    def __init__(self, kubeconfig: str | None = None, *, kinds: tuple[Kind, ...] = WATCHED,
                 informer_options: dict[str, Any] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.kinds = kinds
        self.store = ObjectStore(kinds)
        self.lock = threading.Condition()
        self._informer_options = informer_options or {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._informers: list[Informer] = []
        self._thread: threading.Thread | None = None
        self._seen_version = -1
        self._woken = False         # the wake fd was readable (under `lock`)
        self._wake_armed: int | None = None     # the fd the loop watches for us (under `lock`)
        context = client_config(kubeconfig).get()
        if context is None:
            raise ValueError("the kubeconfig names no current context")
        self._server = context.cluster.server

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "KubeSource":
        if self._thread is None:
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                            name="kube-informers")
            self._thread.start()
            ready.wait()
        return self

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        client = make_client(self.kubeconfig)
        self._informers = [Informer(client, k, self.store, self.lock, **self._informer_options)
                           for k in self.kinds]
        tasks = [loop.create_task(i.run(), name=f"informer-{i.kind.kind}") for i in self._informers]
        ready.set()
        try:
            loop.run_until_complete(asyncio.gather(*tasks))
        except asyncio.CancelledError:
            pass
        finally:
            loop.run_until_complete(client.close())
            loop.close()

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        def cancel() -> None:
            for t in asyncio.all_tasks(loop):
                t.cancel()
        loop.call_soon_threadsafe(cancel)
        thread.join(timeout=5)
        self._thread = None

    # -- the watcher's side ---------------------------------------------------------
    def describe(self) -> str:
        return f"kubernetes:{self._server}"

    def wait_synced(self, timeout: float | None, wake: int | None = None) -> bool:
        """True once every kind was listed; False on timeout or when woken."""
        return self._wait(lambda: self.store.synced, timeout, wake)

    def wait(self, timeout: float | None, wake: int | None = None) -> bool:
        """True when changes are pending or the sync health changed; False on
        timeout (None: none) or once the `wake` fd is readable."""
        return self._wait(self._news, timeout, wake)

    def _wait(self, ready, timeout: float | None, wake: int | None) -> bool:
        self.start()
        if wake is not None:
            self._watch_wake(wake)
        with self.lock:
            self.lock.wait_for(lambda: ready() or self._woken, timeout)
            self._woken = False
            return ready()

    def _watch_wake(self, fd: int) -> None:
        """Have the loop notify the waiter when `fd` turns readable (once: the
        watcher drains the fd, then its next wait arms it again). A wait that
        ended on news leaves the reader armed, and the next one keeps it
        instead of waking the loop's thread to add it again."""
        loop = self._loop
        assert loop is not None
        with self.lock:
            if self._wake_armed == fd:
                return
            self._wake_armed = fd

        def readable() -> None:
            loop.remove_reader(fd)
            with self.lock:
                self._wake_armed = None
                self._woken = True
                self.lock.notify_all()
        loop.call_soon_threadsafe(loop.add_reader, fd, readable)

    def _news(self) -> bool:
        return self.store.has_changes or self.store.version != self._seen_version

    def load(self) -> tuple[ConfigSet, list[Pod]]:
        """Every valid resource (the first publish, `shoal config dump`)."""
        with self.lock:
            self._seen_version = self.store.version
            return self.store.snapshot(), []

    def changes(self) -> Changes:
        with self.lock:
            self._seen_version = self.store.version
            return self.store.drain()

    def reject(self, key: Key, previous: Any | None, errors: list[FieldError]) -> None:
        with self.lock:
            self.store.reject(key, previous, errors)
            self._seen_version = self.store.version

    def refused(self) -> list[FieldError]:
        with self.lock:
            return self.store.refused()

    def health(self) -> dict[str, Any]:
        with self.lock:
            counts = self.store.counts()
            return {"server": self._server, "synced": self.store.synced, "counts": counts,
                    "resources": [h.to_dict() for h in self.store.health.values()]}

    def invalidate(self) -> None:
        """SIGHUP: list every kind again (only the difference is published)."""
        loop = self._loop
        if loop is not None:
            for inf in self._informers:
                loop.call_soon_threadsafe(inf.request_relist)


def parse_spec(config: str) -> str | None:
    """The kubeconfig path of a `kubernetes:[PATH]` config spec ("" or None: the
    conventions of client_config)."""
    path = config[len(SCHEME):]
    return os.path.expanduser(path) if path else None
