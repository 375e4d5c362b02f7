"""The test helpers' port picker never hands out a port an app binds by number."""

import socket

import pytest

from tests.helpers import ports


def test_the_walk_steps_over_the_fixed_app_ports(monkeypatch):
    monkeypatch.setattr(ports, "_next", ports.APP_PORT - 1)
    picked = {ports.free_port("127.0.0.1") for _ in range(3)}
    assert ports.APP_PORT not in picked
    assert picked <= set(range(ports.APP_PORT - 1, ports.APP_PORT + 4))


@pytest.mark.parametrize("port", sorted(ports.FIXED_PORTS))
def test_no_fixed_port_is_handed_out_even_when_free(monkeypatch, port):
    with socket.socket() as s:          # the fixed port is free: the walk could take it
        s.bind(("127.0.0.1", port))
    monkeypatch.setattr(ports, "_next", port)
    assert ports.free_port("127.0.0.1") != port


def test_the_fixed_ports_lie_in_the_walks_range():
    # Otherwise the guard is dead code and a constant drifted out of it.
    assert all(ports.LOW_PORT <= p < ports._ephemeral_low() for p in ports.FIXED_PORTS)
