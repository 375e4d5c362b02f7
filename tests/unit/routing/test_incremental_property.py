"""IncrementalCompiler.update_resources equals a full compile over random change sets
(Deployments, Pods standing for their replicas, overlay pods, pod-ips annotations)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.model import ConfigError, Deployment, Namespace, Pod, Service, replica_pods
from shoal.core.model.resources import Meta
from shoal.routing.compile import compile_config
from shoal.routing.incremental import IncrementalCompiler, full_keyspace

NS = ("a", "b")


def _deployment(ns, replicas, version, n_ips, ip):
    return Deployment(meta=Meta(kind="Deployment", name="web", namespace=ns), replicas=replicas,
                      selector={"app": "web"}, template_labels={"app": "web", "v": version},
                      node="n1", pod_ips=tuple((ip(),) for _ in range(min(n_ips, replicas))))


def _pod(ns, name, ip):
    return Pod(meta=Meta(kind="Pod", name=name, namespace=ns, labels={"app": "web"}),
               ips=(ip,) if ip else (), node="n1")


CHANGE = st.tuples(st.sampled_from(["deploy", "undeploy", "pod", "unpod", "overlay", "unoverlay",
                                    "service", "namespace"]),
                   st.sampled_from(NS), st.integers(0, 3), st.integers(0, 3), st.booleans())


@settings(max_examples=60, deadline=None, derandomize=True)
@given(steps=st.lists(st.lists(CHANGE, min_size=1, max_size=4), min_size=1, max_size=12))
def test_change_sets_match_full_compile(steps):
    counter = iter(range(1, 10_000))

    def ip():
        n = next(counter)
        return f"10.8.{n // 250}.{n % 250 + 1}"

    main, over = {}, {}
    comp = IncrementalCompiler()
    comp.update([])
    for changes in steps:
        ups, dels, xups, xdels = {}, set(), {}, set()
        for kind, ns, a, b, flag in changes:
            dkey = ("Deployment", ns, "web")
            dep = ups.get(dkey) or main.get(dkey)
            names = [p.meta.name for p in replica_pods(dep)] if dep else []
            name = (names + ["solo"])[a % (len(names) + 1)]
            if kind == "deploy":
                ups[dkey] = _deployment(ns, a, "v2" if flag else "v1", b, ip)
                dels.discard(dkey)
            elif kind == "undeploy" and dkey in main:
                dels.add(dkey)
                ups.pop(dkey, None)
            elif kind == "pod":
                ups[("Pod", ns, name)] = _pod(ns, name, ip() if flag else "")
                dels.discard(("Pod", ns, name))
            elif kind == "unpod" and ("Pod", ns, name) in main:
                dels.add(("Pod", ns, name))
                ups.pop(("Pod", ns, name), None)
            elif kind == "overlay":
                xups[(ns, name)] = _pod(ns, name, ip())
                xdels.discard((ns, name))
            elif kind == "unoverlay" and (ns, name) in over:
                xdels.add((ns, name))
                xups.pop((ns, name), None)
            elif kind == "service":
                ups[("Service", ns, "web")] = Service(
                    meta=Meta(kind="Service", name="web", namespace=ns),
                    selector={"app": "web"} if flag else {"app": "none"})
            elif kind == "namespace":
                ups[("Namespace", "", ns)] = Namespace(meta=Meta(
                    kind="Namespace", name=ns,
                    labels={"istio.io/dataplane-mode": "ambient" if flag else "none"}))
        new_main = {k: v for k, v in {**main, **ups}.items() if k not in dels}
        new_over = {k: v for k, v in {**over, **xups}.items() if k not in xdels}
        try:
            expected = full_keyspace(compile_config(list(new_main.values()),
                                                    extra_pods=list(new_over.values())))
        except ConfigError:
            expected = None
        before = dict(comp.keyspace)
        try:
            comp.update_resources(upserts=list(ups.values()), deletes=list(dels),
                                  extra_upserts=list(xups.values()), extra_deletes=list(xdels))
        except ConfigError:
            assert expected is None and comp.keyspace == before
            continue
        assert expected is not None, "the incremental compiler accepted a refused config"
        assert comp.keyspace == expected
        main, over = new_main, new_over
