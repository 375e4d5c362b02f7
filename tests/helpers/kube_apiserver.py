"""A Kubernetes API test server that speaks the real wire protocol over HTTP.

Enough of kube-apiserver for shoal's Kubernetes source and CA, driven through
the real client library (lightkube), since no real API server can be
installed on these machines:

- list (`limit` / `continue` pages, the list's `metadata.resourceVersion`),
  cluster-wide and per namespace; 404 with a Status for a kind not served
  (a CRD not installed);
- watch streams (`watch=true`, `resourceVersion`, `allowWatchBookmarks`,
  `timeoutSeconds`): events after the given version, then live ones; a
  version older than the compaction horizon gets an ERROR event carrying a
  `410 Gone` Status, as etcd compaction causes;
- create / replace (also `/status`) / delete, each bumping one global
  resourceVersion and feeding the watches;
- TokenReview (`authentication.k8s.io/v1`), answering for tokens registered
  with `add_token`, with the audiences and the bound pod in `user.extra`;
- bearer-token authentication of every request (401 otherwise).

Test controls: `compact()` (older versions now answer 410), `drop_watches()`
(every open stream is cut, as a load balancer or an apiserver restart does),
`requests` (what was asked, to prove a watch resumed without a re-list).

    srv = KubeApiServer().start()          # a thread with its own loop
    srv.write_kubeconfig(path)
    srv.create({...}); srv.delete("pods", "ns", "name")

`python -m tests.helpers.kube_apiserver --port P --kubeconfig F` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import copy
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

BOOKMARK_INTERVAL = 1.0     # the real server sends one about every minute; tests want them sooner
ADMIN_TOKEN = "shoal-test-admin"


@dataclass(frozen=True)
class Served:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


CORE = (Served("", "v1", "namespaces", "Namespace", namespaced=False),
        Served("", "v1", "pods", "Pod"), Served("", "v1", "services", "Service"),
        Served("", "v1", "secrets", "Secret"), Served("", "v1", "configmaps", "ConfigMap"),
        Served("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"))
ISTIO = (Served("security.istio.io", "v1", "authorizationpolicies", "AuthorizationPolicy"),)
GATEWAY_API = (Served("gateway.networking.k8s.io", "v1", "gateways", "Gateway"),
               Served("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
               Served("gateway.networking.k8s.io", "v1", "grpcroutes", "GRPCRoute"))


@dataclass
class _Watch:
    served: Served
    namespace: str | None
    selector: str = ""
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class KubeApiServer:
    def __init__(self, *, crds: tuple[Served, ...] = ISTIO + GATEWAY_API, port: int = 0,
                 bookmark_interval: float = BOOKMARK_INTERVAL, host: str = "127.0.0.1",
                 advertise: str = "") -> None:
        self.host = host                         # where it listens
        self.advertise = advertise or host       # the address kubeconfigs name
        self.served = {(s.group, s.version, s.plural): s for s in CORE + crds}
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.rv = 1
        self.compacted = 0                       # watches from versions below this get 410
        self.partitioned = False
        self.objects: dict[tuple, dict[tuple[str, str], dict]] = {k: {} for k in self.served}
        self._sorted: dict[tuple, list[tuple[str, str]] | None] = {}
        self.log: list[tuple[int, tuple, str, dict]] = []
        self.watches: list[_Watch] = []
        self.tokens: dict[str, dict] = {ADMIN_TOKEN: {"username": "admin", "audiences": []}}
        self.requests: list[tuple[str, str, dict]] = []     # (method, path, query)
        self._streams: set[web.StreamResponse] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.advertise}:{self.port}"

    def start(self) -> "KubeApiServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def _serve(self, ready: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.start_async())
        ready.set()
        self.loop.run_forever()

    async def start_async(self) -> None:
        self.loop = asyncio.get_running_loop()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self.loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread:
            self._thread.join(10)

    def write_kubeconfig(self, path: str, token: str = ADMIN_TOKEN) -> str:
        import yaml
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
               "clusters": [{"name": "test", "cluster": {"server": self.url}}],
               "users": [{"name": "test", "user": {"token": token}}],
               "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test",
                                                         "namespace": "default"}}]}
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        return path

    def call(self, fn, *args, **kw):
        """Run `fn` on the server's loop (thread-safe) and return its result."""
        if self.loop is None or self._thread is None:
            return fn(*args, **kw)

        async def run():
            return fn(*args, **kw)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    # -- test controls (thread-safe wrappers) -----------------------------------------
    def create(self, obj: dict) -> dict:
        return self.call(self._write, "ADDED", obj)

    def update(self, obj: dict) -> dict:
        return self.call(self._write, "MODIFIED", obj)

    def apply(self, obj: dict) -> dict:
        """Create or replace."""
        def go():
            s = self._served_for(obj)
            md = obj["metadata"]
            key = (md.get("namespace", "default") if s.namespaced else "", md["name"])
            return self._write("MODIFIED" if key in self.objects[self._skey(s)] else "ADDED", obj)
        return self.call(go)

    def delete(self, plural: str, namespace: str, name: str) -> None:
        def go():
            s = next(s for s in self.served.values() if s.plural == plural)
            self._remove(s, (namespace if s.namespaced else "", name))
        self.call(go)

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        s = next(s for s in self.served.values() if s.plural == plural)
        return copy.deepcopy(self.objects[self._skey(s)].get((namespace if s.namespaced else "", name)))

    def bulk_load(self, objs: list[dict]) -> None:
        """Store many objects at once, without events (a cluster that already
        exists when the watchers start): for load runs."""
        def go():
            for obj in objs:
                s = self._served_for(obj)
                md = obj.setdefault("metadata", {})
                if s.namespaced:
                    md.setdefault("namespace", "default")
                self.rv += 1
                md["resourceVersion"] = str(self.rv)
                md.setdefault("uid", str(uuid.uuid4()))
                md.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
                self.objects[self._skey(s)][(md.get("namespace", "") if s.namespaced else "",
                                             md["name"])] = obj
                self._sorted[self._skey(s)] = None
        self.call(go)

    def compact(self) -> None:
        """Forget history: a watch from a version before now gets 410."""
        def go():
            self.compacted = self.rv
            self.log.clear()
        self.call(go)

    def partition(self) -> None:
        """Cut every watch and answer 503 to everything until `heal()`."""
        self.call(lambda: setattr(self, "partitioned", True))
        self.drop_watches()

    def heal(self) -> None:
        self.call(lambda: setattr(self, "partitioned", False))

    def groups(self) -> set[str]:
        return {s.group for s in self.served.values()}

    def open_watches(self) -> int:
        return self.call(lambda: len(self._streams))

    def drop_watches(self) -> int:
        """Cut every open watch stream; returns how many were cut."""
        def go():
            n = 0
            for resp in list(self._streams):
                transport = resp._req.transport if resp._req is not None else None
                if transport is not None:
                    transport.abort()
                    n += 1
            return n
        return self.call(go)

    def add_token(self, token: str, *, username: str, audiences: list[str],
                  pod: tuple[str, str] | None = None, pod_uid: str = "") -> None:
        """A token TokenReview accepts; `pod` (namespace, name) binds it as a
        projected service-account token is bound."""
        extra = {}
        if pod is not None:
            extra = {"authentication.kubernetes.io/pod-name": [pod[1]],
                     "authentication.kubernetes.io/pod-uid": [pod_uid]}
        self.tokens[token] = {"username": username, "audiences": audiences, "extra": extra,
                              "uid": str(uuid.uuid4())}

    def serve_crds(self, crds: tuple[Served, ...]) -> None:
        def go():
            for s in crds:
                k = self._skey(s)
                self.served[k] = s
                self.objects.setdefault(k, {})
        self.call(go)

    # -- storage -------------------------------------------------------------------
    @staticmethod
    def _skey(s: Served) -> tuple:
        return (s.group, s.version, s.plural)

    def _served_for(self, obj: dict) -> Served:
        """The served kind; another version of the same group and kind (an Istio
        v1beta1 object) is stored as the served one, as a CRD with several
        served versions and one storage version is."""
        api, kind = obj["apiVersion"], obj["kind"]
        group = api.rpartition("/")[0]
        for s in self.served.values():
            if s.kind == kind and (s.api_version == api or s.group and s.group == group):
                return s
        raise KeyError(f"{api} {kind} is not served")

    def _write(self, type_: str, obj: dict, served: Served | None = None) -> dict:
        s = served or self._served_for(obj)
        obj = copy.deepcopy(obj)
        obj["apiVersion"], obj["kind"] = s.api_version, s.kind
        md = obj.setdefault("metadata", {})
        if s.namespaced:
            md.setdefault("namespace", "default")
        key = (md.get("namespace", "") if s.namespaced else "", md["name"])
        store = self.objects[self._skey(s)]
        old = store.get(key)
        if old is None:
            type_ = "ADDED"
            md.setdefault("uid", str(uuid.uuid4()))
            md.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self._sorted[self._skey(s)] = None
        else:
            type_ = "MODIFIED"
            md["uid"] = old["metadata"]["uid"]
            md["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        self.rv += 1
        md["resourceVersion"] = str(self.rv)
        store[key] = obj
        self._publish(s, type_, obj)
        return copy.deepcopy(obj)

    def _remove(self, s: Served, key: tuple[str, str]) -> dict | None:
        obj = self.objects[self._skey(s)].pop(key, None)
        if obj is None:
            return None
        self._sorted[self._skey(s)] = None
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._publish(s, "DELETED", obj)
        return obj

    def _publish(self, s: Served, type_: str, obj: dict) -> None:
        self.log.append((self.rv, self._skey(s), type_, obj))
        for w in self.watches:
            if w.served == s and (w.namespace is None or w.namespace == obj["metadata"].get("namespace")) \
                    and selected(w.selector, obj):
                w.queue.put_nowait((type_, obj))

    def _keys(self, s: Served) -> list[tuple[str, str]]:
        k = self._skey(s)
        if self._sorted.get(k) is None:
            self._sorted[k] = sorted(self.objects[k])
        return self._sorted[k]

    # -- HTTP ------------------------------------------------------------------------
    async def _handle(self, req: web.Request) -> web.StreamResponse:
        if self.partitioned:
            return _status(503, "ServiceUnavailable", "the test server is partitioned")
        self.requests.append((req.method, req.path, dict(req.query)))
        auth = req.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] != ADMIN_TOKEN and auth[7:] not in self.tokens:
            return _status(401, "Unauthorized", "Unauthorized")
        if req.path == "/apis/authentication.k8s.io/v1/tokenreviews" and req.method == "POST":
            return await self._token_review(req)
        route = self._route(req.path)
        if route is None:
            return _status(404, "NotFound", f"the server could not find the requested resource ({req.path})")
        s, namespace, name, sub = route
        if req.method == "GET" and name is None:
            if req.query.get("watch") in ("true", "1"):
                return await self._watch(req, s, namespace)
            return self._list(req, s, namespace)
        if req.method == "GET":
            obj = self.objects[self._skey(s)].get((namespace or "", name))
            return _json(obj) if obj else _status(404, "NotFound", f'{s.plural} "{name}" not found')
        if req.method in ("POST", "PUT"):
            body = orjson.loads(await req.read())
            if s.namespaced:
                body.setdefault("metadata", {}).setdefault("namespace", namespace)
            exists = (body["metadata"].get("namespace", "") if s.namespaced else "",
                      body["metadata"]["name"]) in self.objects[self._skey(s)]
            if req.method == "POST" and exists:
                return _status(409, "AlreadyExists", f'{s.plural} "{body["metadata"]["name"]}" already exists')
            if req.method == "PUT" and not exists:
                return _status(404, "NotFound", f'{s.plural} "{name}" not found')
            out = self._write("ADDED" if req.method == "POST" else "MODIFIED", body, s)
            return _json(out, 201 if req.method == "POST" else 200)
        if req.method == "DELETE":
            obj = self._remove(s, (namespace or "", name))
            return _json(obj) if obj else _status(404, "NotFound", f'{s.plural} "{name}" not found')
        return _status(405, "MethodNotAllowed", f"{req.method} is not supported")

    def _route(self, path: str):
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in self.served:
            namespace, rest = rest[1], rest[2:]
        s = self.served.get((group, version, rest[0]))
        if s is None:
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return s, namespace, name, sub

    def _list(self, req: web.Request, s: Served, namespace: str | None) -> web.Response:
        limit = int(req.query.get("limit") or 0)
        cont = req.query.get("continue")
        store = self.objects[self._skey(s)]
        keys = self._keys(s)
        start, list_rv = 0, self.rv
        if cont:
            token = orjson.loads(base64.b64decode(cont))
            if token["rv"] <= self.compacted:
                return _status(410, "Expired", "The provided continue parameter is too old")
            start, list_rv = bisect.bisect_right(keys, tuple(token["after"])), token["rv"]
        items, i = [], start
        while i < len(keys) and (not limit or len(items) < limit):
            k = keys[i]
            i += 1
            if (namespace is None or k[0] == namespace) and selected(req.query.get("labelSelector", ""),
                                                                     store[k]):
                items.append(store[k])
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if limit and i < len(keys):
            meta["continue"] = base64.b64encode(orjson.dumps(
                {"after": list(keys[i - 1]), "rv": list_rv})).decode()
        body = {"apiVersion": s.api_version, "kind": f"{s.kind}List", "metadata": meta, "items": items}
        return _json(body)

    async def _watch(self, req: web.Request, s: Served, namespace: str | None) -> web.StreamResponse:
        rv_param = req.query.get("resourceVersion") or "0"
        bookmarks = req.query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(req.query.get("timeoutSeconds") or 0) or None
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(req)
        self._streams.add(resp)
        w = _Watch(s, namespace, req.query.get("labelSelector", ""))
        since = int(rv_param)
        try:
            if since and since < self.compacted:
                await _line(resp, {"type": "ERROR", "object": _status_body(
                    410, "Expired", f"too old resource version: {since} ({self.compacted})")})
                return resp
            self.watches.append(w)
            if since == 0:
                for k in self._keys(s):
                    if (namespace is None or k[0] == namespace) and selected(w.selector,
                                                                             self.objects[self._skey(s)][k]):
                        await _line(resp, {"type": "ADDED", "object": self.objects[self._skey(s)][k]})
            else:
                for rv, skey, type_, obj in self.log:
                    if rv > since and skey == self._skey(s) and selected(w.selector, obj) and (
                            namespace is None or obj["metadata"].get("namespace") == namespace):
                        await _line(resp, {"type": type_, "object": obj})
                # queued events were already replayed from the log
                while not w.queue.empty():
                    w.queue.get_nowait()
            deadline = time.monotonic() + timeout if timeout else None
            while deadline is None or time.monotonic() < deadline:
                wait = self.bookmark_interval if bookmarks else 3600.0
                if deadline is not None:
                    wait = min(wait, max(deadline - time.monotonic(), 0))
                try:
                    type_, obj = await asyncio.wait_for(w.queue.get(), wait)
                    await _line(resp, {"type": type_, "object": obj})
                except asyncio.TimeoutError:
                    if bookmarks:
                        await _line(resp, {"type": "BOOKMARK", "object": {
                            "kind": s.kind, "apiVersion": s.api_version,
                            "metadata": {"resourceVersion": str(self.rv)}}})
        except (ConnectionResetError, ClientConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(resp)
            if w in self.watches:
                self.watches.remove(w)
        return resp

    async def _token_review(self, req: web.Request) -> web.Response:
        body = orjson.loads(await req.read())
        spec = body.get("spec", {})
        entry = self.tokens.get(spec.get("token", ""))
        wanted = spec.get("audiences") or []
        status: dict[str, Any] = {"authenticated": False}
        if entry is not None and entry["username"] != "admin":
            audiences = [a for a in wanted if a in entry["audiences"]] if wanted else entry["audiences"]
            if not wanted or audiences:
                status = {"authenticated": True, "audiences": audiences,
                          "user": {"username": entry["username"], "uid": entry["uid"],
                                   "groups": ["system:serviceaccounts", "system:authenticated"],
                                   "extra": entry["extra"]}}
            else:
                status = {"authenticated": False, "error": "token audiences are invalid"}
        elif entry is None:
            status = {"authenticated": False, "error": "invalid bearer token"}
        return _json({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}, 201)


def selected(selector: str, obj: dict) -> bool:
    """`key=value` and `key!=value` terms of a label selector, comma-separated."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v:
                return False
    return True


async def _line(resp: web.StreamResponse, event: dict) -> None:
    await resp.write(orjson.dumps(event) + b"\n")


def _status_body(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _status(code: int, reason: str, message: str) -> web.Response:
    return _json(_status_body(code, reason, message), code)


def _json(obj: Any, code: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=code, content_type="application/json")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--no-crds", action="store_true")
    p.add_argument("--host", default="127.0.0.1", help="listen address")
    p.add_argument("--advertise", default="", help="address in the kubeconfig (default --host)")
    args = p.parse_args()
    srv = KubeApiServer(port=args.port, crds=() if args.no_crds else ISTIO + GATEWAY_API,
                        host=args.host, advertise=args.advertise)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(srv.start_async())
    srv.write_kubeconfig(args.kubeconfig)
    print(orjson.dumps({"url": srv.url}).decode(), flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
