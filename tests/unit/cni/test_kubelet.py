"""The mesh kubelet's bookkeeping (pure parts): backoff, what it supervises."""

from shoal.cni.mesh.kubelet import BACKOFF_MAX_S, backoff, replace_record, supervised
from shoal.cni.mesh.procs import ProcRecord


def rec(name, pid):
    return ProcRecord(name=name, pid=pid, start=1, argv=("x",), log="/l").to_json()


STATE = {"procs": {"controlplane": rec("controlplane", 10), "ztunnel/node-1": rec("ztunnel/node-1", 11)},
         "pods": {"amb/web": {"procs": [rec("amb/web/web", 12)]}}}


def test_first_restart_is_immediate_then_doubles_to_a_cap():
    assert [backoff(n) for n in (1, 2, 3, 4)] == [0.0, 1.0, 2.0, 4.0]
    assert backoff(50) == BACKOFF_MAX_S


def test_components_and_pod_containers_are_supervised():
    assert sorted(supervised(STATE)) == ["amb/web/web", "controlplane", "ztunnel/node-1"]


def test_a_restart_replaces_the_record_where_it_lives():
    import copy
    st = copy.deepcopy(STATE)
    replace_record(st, ProcRecord.from_json(rec("amb/web/web", 99)))
    replace_record(st, ProcRecord.from_json(rec("controlplane", 98)))
    assert st["pods"]["amb/web"]["procs"][0]["pid"] == 99
    assert st["procs"]["controlplane"]["pid"] == 98 and st["procs"]["ztunnel/node-1"]["pid"] == 11


def test_a_standby_is_planned_across_passes(tmp_path, monkeypatch):
    """Each pass reloads the state: the time a component was first seen must
    be saved, or its standby (due STANDBY_AFTER_S later) never comes."""
    from shoal.cni.mesh import kubelet, procs

    class FakeMesh:
        def __init__(self):
            self.state = {"procs": {"ztunnel/node-1": rec("ztunnel/node-1", 11)}, "pods": {}}
            self.saved = None

        def save(self):
            import copy
            self.saved = copy.deepcopy(self.state)

    started = []
    monkeypatch.setattr(procs, "running", lambda r: True)
    monkeypatch.setattr(kubelet.Kubelet, "keep_standby", lambda self, r: started.append(r.name) or True)
    clock = [1000.0]
    monkeypatch.setattr(kubelet.time, "time", lambda: clock[0])
    m = FakeMesh()
    k = kubelet.Kubelet(m)
    k.step()
    assert m.saved["kubelet"]["ztunnel/node-1"]["seen_at"] == 1000.0 and not started
    m.state = m.saved                          # the next pass reads what was saved
    clock[0] += kubelet.STANDBY_AFTER_S
    k.step()
    assert started == ["ztunnel/node-1"]
