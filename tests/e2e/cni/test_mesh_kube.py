"""`shoal mesh up --kubeconfig`: the mesh publishes its pods (with the IPs the
CNI chain gave them), services and namespaces to the test API server as a
kubelet and the controllers would, and the ztunnels read only the API: the
traffic between ambient pods flows on addresses they learned from it."""

import subprocess
import sys
import urllib.request

import orjson
import pytest

from tests.e2e.cni.test_mesh import curl, mesh, shoal, ztunnel_available  # noqa: F401 (fixture)
from tests.helpers.cni_agent import wait_for
from tests.helpers.kube_apiserver import ADMIN_TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(170)
@pytest.mark.skipif(not ztunnel_available(), reason="ztunnel not importable")
def test_ambient_traffic_on_addresses_learned_from_the_api(mesh, tmp_path):  # noqa: F811
    run = mesh["run_dir"]
    kubeconfig = tmp_path / "kubeconfig"
    # Listens on every address; the kubeconfig names the host's bridge address,
    # which the node netns (where the ztunnels run) reach.
    api = subprocess.Popen([sys.executable, "-m", "tests.helpers.kube_apiserver", "--host", "0.0.0.0",
                            "--advertise", f"10.{mesh['base']}.0.1", "--kubeconfig", str(kubeconfig)],
                           stdout=subprocess.PIPE, text=True)
    try:
        port = orjson.loads(api.stdout.readline())["url"].rsplit(":", 1)[1]
        shoal("up", "-f", mesh["app"], "--nodes", "2", "--id", mesh["id"], "--cidr-base",
              str(mesh["base"]), "--kubeconfig", str(kubeconfig), run_dir=run, timeout=150)
        wait_for(lambda: curl(run, "amb/caller", "http://web/")[0] == 0, timeout=30,
                 what="caller -> web through ztunnels fed by the API")
        # The pods are in the API with the IPs the CNI chain assigned...
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/namespaces/amb/pods",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            pods = {p["metadata"]["name"]: p for p in orjson.loads(r.read())["items"]}
        status = orjson.loads(shoal("status", "-o", "json", run_dir=run).stdout)
        ips = {p["pod"]: p["ip"] for p in status["pods"]}
        assert pods["caller"]["status"]["podIP"] == ips["amb/caller"]
        # ...and the ztunnels' table comes from the API, not from a directory.
        for node in ("node-1", "node-2"):
            dump = subprocess.run(["ip", "netns", "exec", f"{mesh['id']}-{node}", "curl", "-s",
                                   "http://127.0.0.1:15000/config_dump"], capture_output=True,
                                  timeout=10)
            routing = orjson.loads(dump.stdout)["routing"]
            assert routing["status"]["source"].startswith("kubernetes:http://"), routing["status"]
            assert ips["amb/caller"] in {ip for w in routing["workloads"] for ip in w["ips"]}
    finally:
        api.terminate()
        api.wait(10)
