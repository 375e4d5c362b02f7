"""`shoal cni install` as a real long-running process on real directories:
binary copied, chained once the agent's snapshot exists, repaired when
another writer rewrites the config or the binary goes, moved when a new
primary config appears, and on SIGTERM the node left byte-identical."""

import os
import signal
import sys

import pytest

from shoal.cni import conflist, protocol
from shoal.cni.installer import Installer, InstallOptions, daemonset_going_away
from tests.helpers.cni_agent import PLUGIN, Proc, wait_for
from tests.unit.cni.test_conflist import CALICO, CILIUM, FLANNEL_CONF

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

OTHER = b'{"cniVersion":"0.3.1","name":"z","type":"macvlan"}\n'   # never primary (sorts last)


@pytest.fixture
def node(tmp_path):
    d = {k: str(tmp_path / k) for k in ("bin", "net.d", "run")}
    for p in d.values():
        os.makedirs(p)
    return d


def start(node, *extra):
    return Proc([sys.executable, "-m", "shoal.cli", "cni", "install", "--cni-bin-dir", node["bin"],
                 "--cni-conf-dir", node["net.d"], "--agent-run-dir", node["run"], *extra],
                os.path.join(node["run"], "..", "install.log"))


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def chained(node, name):
    data = read(os.path.join(node["net.d"], name))
    return data is not None and conflist.has_entry(name, data)


def ready(node):
    return os.path.exists(os.path.join(node["run"], "chain-ready"))


def stop(proc):
    proc.p.send_signal(signal.SIGTERM)
    assert proc.p.wait(10) == 0, proc.output()
    proc.log.close()


def test_install_repair_and_byte_identical_uninstall(node):
    calico, other = (os.path.join(node["net.d"], n) for n in ("10-calico.conflist", "99-z.conf"))
    write(calico, CALICO)
    write(other, OTHER)
    proc = start(node)
    try:
        binary = os.path.join(node["bin"], "shoal-cni")
        wait_for(lambda: read(binary) == read(PLUGIN), what="binary copied")
        assert os.access(binary, os.X_OK)
        # No agent snapshot yet: the plugin could not decide alone, so no chaining.
        assert read(calico) == CALICO and not ready(node)
        write(os.path.join(node["run"], protocol.SNAPSHOT_NAME), b"shoal-enrollment 1\n")
        wait_for(lambda: ready(node) and chained(node, "10-calico.conflist"), what="chained")

        # Calico's installer rewrites its config (atomically, as it does): repaired.
        write(calico + ".tmp", CALICO)
        os.rename(calico + ".tmp", calico)
        wait_for(lambda: chained(node, "10-calico.conflist"), what="repaired after rename")
        write(calico, CALICO)                          # and in place
        wait_for(lambda: chained(node, "10-calico.conflist"), what="repaired after write")
        os.unlink(binary)
        wait_for(lambda: read(binary) == read(PLUGIN), what="binary restored")

        # A new lexically-first network (say Cilium takes over): we move with it.
        cilium = os.path.join(node["net.d"], "05-cilium.conflist")
        write(cilium, CILIUM)
        wait_for(lambda: chained(node, "05-cilium.conflist") and read(calico) == CALICO, what="moved")
        os.unlink(cilium)
        wait_for(lambda: chained(node, "10-calico.conflist"), what="back on calico")
        assert ready(node) and read(other) == OTHER
    finally:
        stop(proc)
    # Not in Kubernetes and no --keep-on-exit: SIGTERM is an uninstall.
    assert read(calico) == CALICO and read(other) == OTHER
    assert sorted(os.listdir(node["net.d"])) == ["10-calico.conflist", "99-z.conf"]
    assert os.listdir(node["bin"]) == [] and not ready(node)


def test_single_conf_is_converted_and_restored(node):
    conf = os.path.join(node["net.d"], "10-flannel.conf")
    write(conf, FLANNEL_CONF)
    proc = start(node, "--no-wait-for-agent")
    try:
        wait_for(lambda: ready(node) and chained(node, "10-flannel.conflist"), what="chained")
        assert not os.path.exists(conf)
    finally:
        stop(proc)
    assert os.listdir(node["net.d"]) == ["10-flannel.conf"] and read(conf) == FLANNEL_CONF


def test_malformed_primary_is_left_alone(node):
    broken = os.path.join(node["net.d"], "05-broken.conflist")
    write(broken, b'{"name": "half written')
    write(os.path.join(node["net.d"], "10-calico.conflist"), CALICO)
    proc = start(node, "--no-wait-for-agent")
    try:
        wait_for(lambda: chained(node, "10-calico.conflist"), what="next file used")
        assert read(broken) == b'{"name": "half written'
        wait_for(lambda: "05-broken.conflist: not JSON" in proc.output(), what="error logged")
    finally:
        stop(proc)


def test_keep_on_exit_leaves_the_node_installed(node):
    write(os.path.join(node["net.d"], "10-calico.conflist"), CALICO)
    proc = start(node, "--no-wait-for-agent", "--keep-on-exit")
    wait_for(lambda: ready(node), what="ready")
    stop(proc)
    assert chained(node, "10-calico.conflist") and os.path.exists(os.path.join(node["bin"], "shoal-cni"))
    # A later installer (the upgrade) takes over, and its uninstall restores the original.
    Installer(InstallOptions(cni_bin_dir=node["bin"], cni_conf_dir=node["net.d"],
                             agent_run_dir=node["run"])).uninstall()
    assert read(os.path.join(node["net.d"], "10-calico.conflist")) == CALICO


def test_upgrade_or_uninstall_decision(node):
    inst = Installer(InstallOptions(cni_bin_dir=node["bin"], cni_conf_dir=node["net.d"],
                                    agent_run_dir=node["run"], daemonset="shoal-cni-node"))
    assert inst.keep_on_exit_decision(lambda: (200, b'{"metadata": {"name": "shoal-cni-node"}}'))
    assert not inst.keep_on_exit_decision(lambda: (404, b"{}"))
    assert not inst.keep_on_exit_decision(
        lambda: (200, b'{"metadata": {"deletionTimestamp": "2026-12-04T23:00:00Z"}}'))

    def unreachable():
        raise OSError("connection refused")
    assert inst.keep_on_exit_decision(unreachable)                     # never a guess
    assert inst.keep_on_exit_decision(lambda: (403, b"forbidden"))
    with pytest.raises(ValueError):
        daemonset_going_away(500, b"")
