"""core.sockets and shards.listener on real loopback sockets (one process)."""

import asyncio
import socket

import pytest

from shoal.core import sockets
from shoal.core.sockets import DefaultSocketFactory, SocketOptions
from shoal.shards.listener import Listener, stream_protocol

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_listen_sets_reuseport_so_two_listeners_share_a_port():
    f = DefaultSocketFactory()
    a = f.listen("127.0.0.1", 0)
    port = a.getsockname()[1]
    b = f.listen("127.0.0.1", port)
    for s in (a, b):
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == sockets.KEEPALIVE_IDLE
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == sockets.KEEPALIVE_PROBES
        assert not s.getblocking()
        s.close()


def test_mark_and_freebind_options():
    f = DefaultSocketFactory(SocketOptions(mark=sockets.PROXY_MARK, freebind=True))
    try:
        s = f.listen("127.0.0.1", 0)
    except PermissionError:
        pytest.skip("SO_MARK needs CAP_NET_ADMIN")
    assert s.getsockopt(socket.SOL_SOCKET, sockets.SO_MARK) == 0x539
    assert s.getsockopt(socket.IPPROTO_IP, sockets.IP_FREEBIND) == 1
    s.close()


def test_listen_error_names_the_address():
    f = DefaultSocketFactory()
    with socket.socket() as plain:      # a non-REUSEPORT owner blocks the group
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        port = plain.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            f.listen("127.0.0.1", port)


def test_bad_mark_is_refused():
    with pytest.raises(ValueError, match="SO_MARK"):
        SocketOptions(mark=-1)


async def test_connect_with_source_and_timeout():
    f = DefaultSocketFactory()
    lst = f.listen("127.0.0.1", 0)
    port = lst.getsockname()[1]
    s = await f.connect("127.0.0.1", port, source=("127.0.0.2", 0))
    assert s.getsockname()[0] == "127.0.0.2"
    s.close()
    lst.close()
    # A listener whose queue is full drops SYNs: the connect times out.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    await asyncio.sleep(0.05)
    with pytest.raises((TimeoutError, OSError)):
        await f.connect("127.0.0.1", port, timeout=0.3)
    for c in fillers:
        c.close()
    full.close()


async def test_closing_a_listener_serves_its_queue_instead_of_resetting_it():
    f = DefaultSocketFactory()
    sock = f.listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    served = []

    async def handler(reader, writer):
        line = await reader.readline()
        served.append(line)
        writer.write(line)
        await writer.drain()
        writer.close()

    lst = Listener(sock, stream_protocol(handler), name="t")
    # Connect synchronously: the loop does not run, so they sit in the queue.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    for c in clients:
        c.sendall(b"hi\n")
    assert lst.close() == 5
    for c in clients:
        c.settimeout(5)
        assert await asyncio.to_thread(c.recv, 10) == b"hi\n"
        c.close()
    await asyncio.wait_for(lst.wait_idle(), 5)
    assert served == [b"hi\n"] * 5
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port))


async def test_abort_all_closes_open_connections():
    f = DefaultSocketFactory()
    sock = f.listen("127.0.0.1", 0)
    port = sock.getsockname()[1]

    async def handler(reader, writer):
        await reader.read()          # holds the connection open

    lst = Listener(sock, stream_protocol(handler), name="t")
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(100):
        if lst.open_connections:
            break
        await asyncio.sleep(0.01)
    assert lst.open_connections == 1
    lst.close()
    assert lst.abort_all() == 1
    assert await asyncio.wait_for(r.read(), 5) == b""
    w.close()
