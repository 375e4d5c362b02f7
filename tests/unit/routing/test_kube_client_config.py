"""routing/kube/source.client_config: the client conventions (in-cluster,
--kubeconfig, $KUBECONFIG), as client-go resolves them."""

import yaml

from shoal.routing.kube.source import client_config


def kubeconfig(path, server):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


def test_in_cluster_service_account_comes_first(tmp_path, monkeypatch):
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("projected-token")
    (sa / "namespace").write_text("shoal-system")
    (sa / "ca.crt").write_text("")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", kubeconfig(tmp_path / "kc", "https://elsewhere:6443"))
    cfg = client_config(service_account=str(sa)).get()
    assert cfg.cluster.server == "https://10.96.0.1:443"
    assert cfg.user.token == "projected-token" and cfg.namespace == "shoal-system"


def test_outside_a_cluster_kubeconfig_env_then_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", kubeconfig(tmp_path / "env", "https://from-env:6443"))
    assert client_config(service_account=str(tmp_path / "none")).get().cluster.server == \
        "https://from-env:6443"
    flag = kubeconfig(tmp_path / "flag", "https://from-flag:6443")
    assert client_config(flag).get().cluster.server == "https://from-flag:6443"
