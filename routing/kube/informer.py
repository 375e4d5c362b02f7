"""List + watch of each kind through lightkube, feeding the ObjectStore.

Per kind, the loop client-go's reflector runs:

    list (in pages) -> store.replace -> watch from the list's resourceVersion
      - a dropped or timed-out stream resumes from the last resourceVersion
        seen (an event or a bookmark): no re-list (lightkube's watch retry);
      - `410 Gone` (that version was compacted away) -> list again; the
        store publishes only the difference (store.py, invariant 3);
      - other errors -> back off with jitter and try again;
      - 404 on a CRD kind (not installed) -> reported as missing, and looked
        for again every CRD_RECHECK seconds: installing Gateway API later works.

The store is shared with the writer thread: every call into it holds `lock`
and ends with `notify` so the writer wakes up.
"""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Callable

import httpx2       # lightkube's HTTP client: its transport errors are connection errors
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError, NotReadyError
from lightkube.types import OnErrorAction, OnErrorResult

from shoal.routing.kube.kinds import Kind
from shoal.routing.kube.store import ObjectStore

# client-go's reflector backs off from 800 ms to 30 s; the same bounds here.
BACKOFF_BASE = 0.8
BACKOFF_CAP = 30.0
JITTER = 0.5                # +-50 %: a thousand nodes reconnecting do not arrive in step
# Pages of a list: client-go's default; bounds one response's memory at 100k pods.
LIST_PAGE = 500
# The API server ends a watch after timeoutSeconds; client-go picks 5-10 min at
# random so watches do not all restart together. A watch ended this way resumes
# from its last resourceVersion (bookmarks keep that version fresh).
WATCH_TIMEOUT_MIN = 300
CRD_RECHECK = 30.0          # how often a missing CRD kind is looked for again
HTTP_GONE, HTTP_NOT_FOUND = 410, 404


def backoff_delay(attempt: int, rng: random.Random = random._inst) -> float:
    """Exponential backoff with +-JITTER, capped (attempt counts from 1)."""
    base = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(attempt - 1, 0))
    return base * (1 + JITTER * (2 * rng.random() - 1))


def status_code(exc: BaseException) -> int | None:
    """The HTTP/API status of a client error (a watch ERROR event carries one too)."""
    if isinstance(exc, ApiError) and exc.status is not None and exc.status.code:
        return exc.status.code
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


# Why a list/watch stream ended, in ztunnel's words (istio_xds_connection_
# terminations_total{reason}): the transport failed, the API answered an
# error, or we start over on purpose (410 Gone, SIGHUP).
CONNECTION_ERROR, ERROR, RECONNECT = "ConnectionError", "Error", "Reconnect"


def termination_reason(exc: BaseException) -> str:
    if status_code(exc) is not None:
        return ERROR
    if isinstance(exc, (OSError, httpx2.TransportError)):
        return CONNECTION_ERROR
    return ERROR


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class Informer:
    """One kind's list + watch loop (run in the source's event loop)."""

    def __init__(self, client: AsyncClient, kind: Kind, store: ObjectStore,
                 lock: threading.Condition, *, list_page: int = LIST_PAGE,
                 watch_timeout: int = WATCH_TIMEOUT_MIN, crd_recheck: float = CRD_RECHECK,
                 rng: random.Random | None = None) -> None:
        self.client, self.kind, self.store, self.lock = client, kind, store, lock
        self.list_page, self.watch_timeout = list_page, watch_timeout
        self.crd_recheck = crd_recheck
        self.rng = rng or random.Random()
        self.relist = asyncio.Event()       # SIGHUP: list again now
        self._relist_requested = False
        self._watching: asyncio.Future | None = None

    def _locked(self, fn: Callable, *args, **kw):
        with self.lock:
            out = fn(*args, **kw)
            self.lock.notify_all()
            return out

    def request_relist(self) -> None:
        """List again now (SIGHUP), whatever the loop is doing."""
        self._relist_requested = True
        self.relist.set()
        if self._watching is not None:
            self._watching.cancel()

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                rv = await self._list()
                attempt = 0
                self._watching = asyncio.ensure_future(self._watch(rv))
                await self._watching
            except Gone:
                self._locked(self.store.terminated, self.kind.kind, RECONNECT)
                continue
            except asyncio.CancelledError:
                # A relist cancels only the watch; a cancel of run() itself
                # (its owner closing) must end it even if a relist is pending.
                me = asyncio.current_task()
                if self._relist_requested and me is not None and not me.cancelling():
                    self._relist_requested = False
                    self._locked(self.store.terminated, self.kind.kind, RECONNECT)
                    continue
                raise
            except Exception as exc:    # any failure of one kind must not stop the others
                code = status_code(exc)
                if code == HTTP_GONE:       # a list page's continue token expired
                    self._locked(self.store.terminated, self.kind.kind, RECONNECT)
                    continue
                if code == HTTP_NOT_FOUND and self.kind.crd:
                    self._locked(self.store.failed, self.kind.kind,
                                 f"{self.kind.name} is not served by the API (CRD not installed?); "
                                 "skipped", missing=True)
                    await self._sleep(self.crd_recheck)
                    continue
                attempt += 1
                self._locked(self.store.terminated, self.kind.kind, termination_reason(exc))
                self._locked(self.store.failed, self.kind.kind, _describe(exc))
                await self._sleep(backoff_delay(attempt, self.rng))
            finally:
                self._watching = None

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):   # wait_for may swallow a cancel on 3.11
                await self.relist.wait()
        except TimeoutError:
            pass
        self.relist.clear()

    async def _list(self) -> str:
        """List in pages, each applied as it arrives (one page of raw objects in
        memory at a time, not the whole cluster)."""
        self.relist.clear()
        page: list[dict] = []
        gc = self.client._client
        br = gc.prepare_request("list", res=self.kind.resource,
                                namespace="*" if self.kind.namespaced else None,
                                params={"limit": self.list_page,
                                        "labelSelector": self.kind.label_selector or None})
        listing = gc.list(br)
        self._locked(self.store.begin_list, self.kind.kind)
        async for obj in listing:
            page.append(dict(obj))
            if len(page) >= self.list_page:
                self._locked(self.store.list_page, self.kind.kind, page)
                page = []
        self._locked(self.store.list_page, self.kind.kind, page)
        try:
            rv = listing.resourceVersion
        except NotReadyError:   # a server that sent no list version: watch from "now"
            rv = ""
        self._locked(self.store.end_list, self.kind.kind, rv)
        return rv

    async def _watch(self, rv: str) -> None:
        """Stream events until 410 (raises Gone) or a SIGHUP re-list (cancelled)."""
        def on_error(exc: Exception, count: int) -> OnErrorResult:
            if status_code(exc) == HTTP_GONE:
                raise Gone() from exc
            self._locked(self.store.terminated, self.kind.kind, termination_reason(exc))
            self._locked(self.store.failed, self.kind.kind, f"watch: {_describe(exc)}")
            return OnErrorResult(OnErrorAction.RETRY, sleep=backoff_delay(count, self.rng))

        # lightkube's public watch() has no allowWatchBookmarks flag: build the
        # same request through its generic client with the flag added.
        gc = self.client._client
        timeout = self.rng.randint(self.watch_timeout, 2 * self.watch_timeout)
        br = gc.prepare_request("list", res=self.kind.resource, watch=True,
                                namespace="*" if self.kind.namespaced else None,
                                params={"resourceVersion": rv or None,
                                        "labelSelector": self.kind.label_selector or None,
                                        "allowWatchBookmarks": "true",
                                        "timeoutSeconds": timeout})
        async for type_, obj in gc.watch(br, on_error=on_error):
            self._locked(self.store.event, self.kind.kind, type_, dict(obj))


def _describe(exc: BaseException) -> str:
    code = status_code(exc)
    text = str(exc) or type(exc).__name__
    return f"{code}: {text}" if code else text
