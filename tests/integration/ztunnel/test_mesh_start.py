"""The test mesh (tests/helpers/ztunnel_mesh.py) leaves nothing running when
it fails to start: a node that cannot boot once left the CA and the other
node up under every later measurement, holding their ports."""

from __future__ import annotations

import socket

import pytest

from tests.helpers.ports import APP_PORT
from tests.helpers.ztunnel_mesh import Mesh

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_node_that_cannot_boot_stops_the_ca_the_apps_and_the_other_node(tmp_path):
    m = Mesh(tmp_path, workers=1)
    m.pod("client", node="node-a", sa="sleep")
    m.pod("echo", node="node-b", app="echo", port=APP_PORT)
    with socket.socket() as squatter:       # node-b's admin port, taken
        squatter.bind(("0.0.0.0", m.nodes["node-b"].admin))
        squatter.listen()
        with pytest.raises(RuntimeError, match="ztunnel node-b exited"):
            m.start()
    started = [m.ca, *m.apps.values(), *(n.proc for n in m.nodes.values())]
    assert all(p is not None for p in started)
    assert [p.name for p in started if p.p.poll() is None] == []
