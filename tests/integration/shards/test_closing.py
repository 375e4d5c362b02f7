"""shards.closing on real loopback sockets: a listener about to close for
good refuses new handshakes, keeps those under way, and a client whose SYN it
dropped reaches a live SO_REUSEPORT peer once it is closed."""

import socket
import threading
import time

import pytest

from shoal.core.sockets import DefaultSocketFactory
from shoal.shards.closing import refuse_new_handshakes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

# Long enough for a loopback handshake many times over, short of the
# client's 1 s SYN retransmission.
NO_ANSWER_WITHIN = 0.5
CLIENTS = 32


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_new_handshakes_refused_queued_ones_kept(host):
    lst = DefaultSocketFactory().listen(host, 0)
    lst.setblocking(True)
    port = lst.getsockname()[1]
    before = socket.create_connection((host, port), timeout=5)
    assert refuse_new_handshakes(lst)
    # The connection queued before the filter is still accepted and works.
    before.sendall(b"queued")
    conn, _ = lst.accept()
    assert conn.recv(16) == b"queued"
    # A new SYN gets no answer: neither a connection nor a refusal.
    with pytest.raises(TimeoutError):
        socket.create_connection((host, port), timeout=NO_ANSWER_WITHIN)
    for s in (before, conn, lst):
        s.close()


def test_only_tcp_sockets_get_the_filter():
    # It reads TCP flags: on a UDP or Unix socket it would drop payload.
    for family, kind in ((socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_UNIX, socket.SOCK_STREAM)):
        with socket.socket(family, kind) as s:
            assert not refuse_new_handshakes(s)


def test_dropped_syns_reach_the_live_peer_after_close_none_reset():
    factory = DefaultSocketFactory()
    closing = factory.listen("127.0.0.1", 0)
    port = closing.getsockname()[1]
    live = factory.listen("127.0.0.1", port)
    live.setblocking(True)
    assert refuse_new_handshakes(closing)
    outcomes: list[str] = []

    def client() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"x")
                outcomes.append("ok" if c.recv(1) == b"x" else "closed")
        except OSError as e:
            outcomes.append(repr(e))

    def server() -> None:
        for _ in range(CLIENTS):
            conn, _ = live.accept()
            conn.sendall(conn.recv(1))
            conn.close()

    srv = threading.Thread(target=server, daemon=True)
    srv.start()
    clients = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in clients:
        t.start()
    # The SYNs hashed to `closing` wait for their retransmission: nothing
    # reached its queue (without the filter about half would), so its close
    # has nothing to reset or migrate.
    time.sleep(NO_ANSWER_WITHIN)
    closing.setblocking(False)
    with pytest.raises(BlockingIOError):
        closing.accept()
    closing.close()
    for t in clients:
        t.join(10)
    srv.join(10)
    live.close()
    assert outcomes == ["ok"] * CLIENTS, outcomes
