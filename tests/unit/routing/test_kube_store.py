"""routing/kube/store.py: the informer cache (pure logic, no API server)."""

from shoal.core.model import FieldError
from shoal.routing.kube.kinds import WATCHED
from shoal.routing.kube.store import ObjectStore


def pod(name, ip="10.0.0.1", rv="1", ns="demo", **status):
    st = {"phase": "Running", "podIPs": [{"ip": ip}], **status}
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                         "labels": {"app": name}},
            "spec": {"nodeName": "n1", "serviceAccountName": name}, "status": st}


def policy(name, rv="1", action="ALLOW"):
    return {"metadata": {"name": name, "namespace": "demo", "resourceVersion": rv},
            "spec": {"action": action}}


def synced_store():
    s = ObjectStore(WATCHED)
    for k in WATCHED:
        s.replace(k.kind, [], "1")
    s.drain()
    return s


def test_synced_only_after_every_kind_listed_or_missing():
    s = ObjectStore(WATCHED)
    for k in WATCHED[:-1]:
        s.replace(k.kind, [], "5")
        assert not s.synced
    s.failed(WATCHED[-1].kind, "404", missing=True)
    assert s.synced and s.health[WATCHED[-1].kind].missing


def test_list_items_get_kind_and_api_version_and_are_validated():
    s = ObjectStore(WATCHED)
    s.replace("Pod", [pod("a"), pod("b", "10.0.0.2")], "7")
    ch = s.drain()
    assert sorted(p.meta.name for p in ch.upserts) == ["a", "b"] and ch.deletes == []
    assert ch.upserts[0].ips == ("10.0.0.1",) and ch.upserts[0].service_account == "a"
    assert s.health["Pod"].resource_version == "7" and s.health["Pod"].synced


def test_events_for_one_key_collapse_into_the_last():
    s = synced_store()
    s.event("Pod", "ADDED", pod("a", rv="2"))
    s.event("Pod", "MODIFIED", pod("a", "10.0.0.9", rv="3"))
    ch = s.drain()
    assert [p.ips for p in ch.upserts] == [("10.0.0.9",)]
    s.event("Pod", "DELETED", pod("a", "10.0.0.9", rv="4"))
    assert s.drain().deletes == [("Pod", "demo", "a")]
    assert s.health["Pod"].events == 3 and s.health["Pod"].resource_version == "4"


def test_ready_condition_and_deletion_timestamp_make_a_pod_unready():
    s = synced_store()
    s.event("Pod", "ADDED", pod("a", rv="2", conditions=[{"type": "Ready", "status": "False"}]))
    assert s.drain().upserts[0].ready is False
    s.event("Pod", "MODIFIED", pod("a", rv="3", conditions=[{"type": "Ready", "status": "True"}]))
    assert s.drain().upserts[0].ready is True
    terminating = pod("a", rv="4")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    s.event("Pod", "MODIFIED", terminating)
    assert s.drain().upserts[0].ready is False


def test_a_finished_pod_is_deleted_so_its_ip_can_be_reused():
    s = synced_store()
    s.event("Pod", "ADDED", pod("job", rv="2"))
    s.drain()
    s.event("Pod", "MODIFIED", pod("job", rv="3", phase="Succeeded"))
    assert s.drain().deletes == [("Pod", "demo", "job")]


def test_a_change_shoal_does_not_use_publishes_nothing():
    s = synced_store()
    s.event("Pod", "ADDED", pod("a", rv="2"))
    s.drain()
    s.event("Pod", "MODIFIED", pod("a", rv="3", startTime="2026-01-01T00:00:00Z"))
    assert len(s.drain()) == 0


def test_invalid_object_is_refused_alone_and_the_last_valid_stays():
    s = synced_store()
    s.event("AuthorizationPolicy", "ADDED", policy("p", rv="2"))
    s.event("AuthorizationPolicy", "ADDED", policy("q", rv="3"))
    s.drain()
    s.event("AuthorizationPolicy", "MODIFIED", policy("p", rv="4", action="MAYBE"))
    s.event("Pod", "ADDED", pod("a", rv="5"))
    ch = s.drain()
    assert [r.meta.name for r in ch.upserts] == ["a"]        # the rest still applies
    [err] = s.refused()
    assert (err.kind, err.namespace, err.name, err.field) == (
        "AuthorizationPolicy", "demo", "p", "spec.action")
    assert [r.action for r in s.snapshot().resources if r.meta.name == "p"] == ["ALLOW"]
    s.event("AuthorizationPolicy", "MODIFIED", policy("p", rv="6", action="DENY"))
    assert s.refused() == [] and s.drain().upserts[0].action == "DENY"


def test_an_invalid_new_object_never_appears_and_its_delete_is_quiet():
    s = synced_store()
    s.event("AuthorizationPolicy", "ADDED", policy("bad", rv="2", action="MAYBE"))
    assert len(s.drain()) == 0 and len(s.refused()) == 1
    s.event("AuthorizationPolicy", "DELETED", policy("bad", rv="3", action="MAYBE"))
    assert len(s.drain()) == 0 and s.refused() == []


def test_relist_publishes_only_the_difference_without_reparsing():
    s = ObjectStore(WATCHED)
    s.replace("Pod", [pod("a", rv="2"), pod("b", "10.0.0.2", rv="3"), pod("c", "10.0.0.3", rv="4")], "4")
    s.drain()
    held = {r.meta.name: r for r in s.snapshot().resources}
    # After a 410: b changed, c was deleted, d was added while we were away.
    s.replace("Pod", [pod("a", rv="2"), pod("b", "10.0.0.7", rv="9"), pod("d", "10.0.0.4", rv="8")], "9")
    ch = s.drain()
    assert sorted(r.meta.name for r in ch.upserts) == ["b", "d"]
    assert ch.deletes == [("Pod", "demo", "c")]
    assert {r.meta.name: r for r in s.snapshot().resources}["a"] is held["a"]   # not re-parsed
    assert s.health["Pod"].relists == 1


def test_bookmark_moves_the_version_only():
    s = synced_store()
    s.event("Pod", "BOOKMARK", {"metadata": {"resourceVersion": "42"}})
    assert len(s.drain()) == 0
    assert s.health["Pod"].resource_version == "42" and s.health["Pod"].bookmarks == 1


def test_a_crd_going_missing_takes_its_objects_with_it():
    s = synced_store()
    s.event("AuthorizationPolicy", "ADDED", policy("p", rv="2"))
    s.drain()
    s.failed("AuthorizationPolicy", "404 not found", missing=True)
    assert s.drain().deletes == [("AuthorizationPolicy", "demo", "p")]
    assert s.health["AuthorizationPolicy"].errors == 1


def test_writer_rejection_holds_the_previous_object():
    s = synced_store()
    s.event("Pod", "ADDED", pod("a", rv="2"))
    first = s.drain().upserts[0]
    s.event("Pod", "MODIFIED", pod("a", "10.0.0.5", rv="3"))
    s.drain()
    err = FieldError(file="", kind="Pod", namespace="demo", name="a", field="status.podIP",
                     message="IP 10.0.0.5 is used by several pods")
    s.reject(("Pod", "demo", "a"), first, [err])
    assert s.refused() == [err]
    assert [r.ips for r in s.snapshot().resources] == [("10.0.0.1",)]


def test_refused_objects_are_bounded():
    from shoal.routing.kube.store import MAX_REFUSED
    s = synced_store()
    for i in range(MAX_REFUSED + 10):
        s.event("AuthorizationPolicy", "ADDED", policy(f"p{i}", rv=str(i + 2), action="MAYBE"))
    assert len(s.refused()) == MAX_REFUSED


def test_grpcroutes_are_watched_and_parsed_like_a_file():
    s = synced_store()
    s.event("GRPCRoute", "ADDED", {
        "metadata": {"name": "g", "namespace": "demo", "resourceVersion": "2"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                 "rules": [{"matches": [{"method": {"service": "pkg.Svc"}}],
                            "backendRefs": [{"name": "web", "port": 7070}]}]}})
    (route,) = s.drain().upserts
    assert route.meta.kind == "GRPCRoute" and route.rules[0].matches[0].path.value == "/pkg.Svc"
