"""DirectorySource (inotify, parse cache, overlay) and the `shoal config` commands."""

import http.server
import shutil
import threading
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from shoal.routing.cli import config
from shoal.routing.compile import compile_config
from shoal.routing.dump import dump_view
from shoal.routing.source import DirectorySource
from shoal.routing.view import StaticView

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "config"

pytestmark = [pytest.mark.integration]


@pytest.fixture
def cfgdir(tmp_path):
    d = tmp_path / "cfg"
    shutil.copytree(FIXTURES / "mesh", d)
    return d


def test_inotify_wakes_on_change_and_times_out_otherwise(cfgdir):
    src = DirectorySource(cfgdir)
    try:
        t0 = time.monotonic()
        assert src.wait(0.2) is False and time.monotonic() - t0 >= 0.15
        (cfgdir / "new.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n")
        assert src.wait(5.0) is True
    finally:
        src.close()


def test_polling_fallback_sees_change(cfgdir):
    src = DirectorySource(cfgdir, use_inotify=False)
    (cfgdir / "new.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n")
    assert src.wait(5.0) is True


def test_only_changed_files_are_reparsed_and_creation_order_is_stable(cfgdir):
    src = DirectorySource(cfgdir, use_inotify=False)
    cfg1, _ = src.load()
    (cfgdir / "00-first.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n")
    cfg2, _ = src.load()
    old = {r.meta.key: r for r in cfg1.resources}
    new = {r.meta.key: r for r in cfg2.resources}
    assert all(new[k] is r for k, r in old.items())          # same objects: not re-parsed
    assert new[("Namespace", "", "z")].meta.index > max(r.meta.index for r in old.values())


def test_overlay_pods_replace_replicas(cfgdir, tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    cfg, _ = DirectorySource(cfgdir, use_inotify=False).load()
    replica = next(w for w in compile_config(cfg) if getattr(w, "workload_name", "") == "web")
    (overlay / "pods.yaml").write_text(
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {replica.name}, namespace: shop, "
        f"labels: {{app: web, version: v2}}}}\nspec: {{nodeName: node-z}}\nstatus: {{podIP: 10.0.9.9}}\n")
    cfg, extra = DirectorySource(cfgdir, overlay=overlay, use_inotify=False).load()
    v = StaticView.from_records(compile_config(cfg, extra_pods=extra))
    w = v.workload_by_ip("10.0.9.9")
    assert w.name == replica.name and w.node == "node-z" and w.workload_name == "web"


def test_validate_ok_summary():
    result = CliRunner().invoke(config, ["validate", str(FIXTURES / "mesh")])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "AuthorizationPolicy" in result.output
    assert "note:" in result.output
    js = CliRunner().invoke(config, ["validate", "-o", "json", str(FIXTURES / "mesh")])
    data = orjson.loads(js.output)
    assert data["valid"] and data["resources"]["Service"] == 3 and data["records"]["workloads"] == 6


def test_validate_lists_every_error_and_fails():
    result = CliRunner().invoke(config, ["validate", str(FIXTURES / "bad")])
    assert result.exit_code == 1
    assert "Service/shop/broken spec.ports[0].targetPort" in result.output
    assert "AuthorizationPolicy/shop/ext metadata.annotations[istio.io/dry-run]" in result.output
    assert "spec.rules[0].timeouts.request" in result.output


@pytest.fixture
def admin_server():
    # The body is what the real admin endpoint (core/admin.py) serves, so the
    # CLI is tested against the actual /config_dump shape.
    from shoal.core.admin import Endpoints, Request

    class App:
        def admin_sections(self):
            return {"certificates": lambda: []}

    cfg, _ = DirectorySource(FIXTURES / "mesh", use_inotify=False).load()
    view = StaticView.from_records(compile_config(cfg))
    endpoints = Endpoints(app=App(), view=lambda: view, dump_routing=dump_view,
                          set_log_level=lambda level: None, quit=lambda: None,
                          info=lambda: {"worker": 0}, draining=lambda: False)
    body = endpoints.config_dump(Request(method="GET", path="/config_dump")).body

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/config_dump" else 404)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_dump_table_and_json(admin_server):
    result = CliRunner().invoke(config, ["dump", "--admin", admin_server])
    assert result.exit_code == 0, result.output
    assert "WORKLOADS (6)" in result.output and "10.0.1.20" in result.output
    assert "POLICIES (4)" in result.output and "WORKLOAD_SELECTOR" in result.output
    js = CliRunner().invoke(config, ["dump", "--admin", admin_server, "-o", "json"])
    data = orjson.loads(js.output)
    assert {"workloads", "services", "policies", "waypoints", "routes", "status"} <= set(data)


def test_dump_unreachable_admin_is_a_clear_error():
    result = CliRunner().invoke(config, ["dump", "--admin", "127.0.0.1:1"])
    assert result.exit_code == 2 and "cannot fetch" in result.output


def test_validate_warns_like_istiod_for_http_attributes_at_ztunnel(tmp_path):
    (tmp_path / "p.yaml").write_text("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-get, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [GET]}}]}]
""")
    result = CliRunner().invoke(config, ["validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert ("warning: AuthorizationPolicy/shop/deny-get (ztunnel): UnsupportedValue: ztunnel "
            "does not support HTTP attributes (found: methods)") in result.output
    assert "this DENY policy has no enforceable rules at ztunnel" in result.output
    data = orjson.loads(CliRunner().invoke(config, ["validate", "-o", "json", str(tmp_path)]).output)
    assert data["warnings"][0]["policy"] == "shop/deny-get"
