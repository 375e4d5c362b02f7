"""ZDS over a real SOCK_SEQPACKET socket: snapshot, add/del, acks, fds,
reconnect, newest-connection adds and delete-to-all."""

import asyncio
import os

import pytest

from shoal.ztunnel.inpod import InPodClient, SnapshotDone, WorkloadAdded, WorkloadDeleted, WorkloadKept
from shoal.core.netns import netns_id
from shoal.core.zds import WorkloadInfo, ZdsError
from shoal.cni.zds_server import NoZtunnel, PodEntry, ZdsServer
from tests.helpers.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

SELF_NS = "/proc/self/ns/net"


def pod(name, path=SELF_NS):
    return PodEntry(uid=f"Kubernetes//Pod/default/{name}",
                    info=WorkloadInfo(name=name, namespace="default"), netns_path=path)


class Recorder:
    def __init__(self, fail_on=None):
        self.events = []
        self.fail_on = fail_on
        self.changed = asyncio.Event()

    async def __call__(self, ev):
        if isinstance(ev, WorkloadAdded):
            # The fd is a live netns fd during the callback.
            assert netns_id(ev.netns_fd) == netns_id(SELF_NS)
            self.events.append(("add", ev.uid, ev.info.name))
        elif isinstance(ev, WorkloadKept):
            self.events.append(("keep", ev.uid))
        elif isinstance(ev, WorkloadDeleted):
            self.events.append(("del", ev.uid))
        elif isinstance(ev, SnapshotDone):
            self.events.append(("snapshot",))
        self.changed.set()
        if self.fail_on and ev.__class__ is self.fail_on:
            raise RuntimeError("cannot build listeners")


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "ztunnel.sock")


async def test_snapshot_add_del(sock_path):
    pods = [pod("a"), pod("gone", "/nonexistent/netns")]
    server = ZdsServer(sock_path, lambda: list(pods))
    await server.start()
    rec = Recorder()
    client = InPodClient(sock_path, rec)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(server.connected.wait(), 5)
        assert rec.events == [("add", "Kubernetes//Pod/default/a", "a"),
                              ("keep", "Kubernetes//Pod/default/gone"), ("snapshot",)]
        await server.add(pod("b"))     # returns only after the ack
        assert rec.events[-1] == ("add", "Kubernetes//Pod/default/b", "b")
        await server.delete("Kubernetes//Pod/default/a")
        assert rec.events[-1] == ("del", "Kubernetes//Pod/default/a")
    finally:
        client.stop()
        await server.close()
        await asyncio.wait_for(task, 5)


async def test_add_without_ztunnel_raises(sock_path):
    server = ZdsServer(sock_path, list)
    await server.start()
    try:
        with pytest.raises(NoZtunnel, match="shoal ztunnel run"):
            await server.add(pod("a"))
    finally:
        await server.close()


async def test_callback_error_becomes_ack_error(sock_path):
    server = ZdsServer(sock_path, list)
    await server.start()
    client = InPodClient(sock_path, Recorder(fail_on=WorkloadAdded))
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(server.connected.wait(), 5)
        with pytest.raises(ZdsError, match="cannot build listeners"):
            await server.add(pod("a"))
    finally:
        client.stop()
        await server.close()
        await asyncio.wait_for(task, 5)


async def test_client_retries_until_agent_appears_and_resyncs(sock_path):
    rec = Recorder()
    client = InPodClient(sock_path, rec, backoff_initial=0.02, backoff_max=0.1)
    task = asyncio.create_task(client.run())
    await until(lambda: client.failures >= 2, what="two failed connects (no agent yet)")
    pods = [pod("a")]
    server = ZdsServer(sock_path, lambda: list(pods))
    await server.start()
    try:
        await asyncio.wait_for(server.connected.wait(), 5)
        # Agent restart: the client reconnects and gets a fresh snapshot.
        await server.close()
        server = ZdsServer(sock_path, lambda: list(pods))
        await server.start()
        await asyncio.wait_for(server.connected.wait(), 5)
        assert rec.events.count(("snapshot",)) == 2
        assert client.connections == 2
    finally:
        client.stop()
        await server.close()
        await asyncio.wait_for(task, 5)


async def test_adds_to_newest_deletes_to_all(sock_path):
    server = ZdsServer(sock_path, list)
    await server.start()
    old, new = Recorder(), Recorder()
    c1 = InPodClient(sock_path, old, instance="zt-old")
    t1 = asyncio.create_task(c1.run())
    try:
        await asyncio.wait_for(server.connected.wait(), 5)
        c2 = InPodClient(sock_path, new, instance="zt-new")
        t2 = asyncio.create_task(c2.run())
        await until(lambda: server.ztunnels == 2)
        await server.add(pod("x"))
        assert ("add", "Kubernetes//Pod/default/x", "x") in new.events
        assert not any(e[0] == "add" for e in old.events)
        await server.delete("Kubernetes//Pod/default/x")
        assert old.events[-1] == new.events[-1] == ("del", "Kubernetes//Pod/default/x")
        c2.stop()
        await asyncio.wait_for(t2, 5)
        await until(lambda: server.ztunnels == 1)
    finally:
        c1.stop()
        await server.close()
        await asyncio.wait_for(t1, 5)


async def test_no_fd_leak(sock_path):
    before = len(os.listdir("/proc/self/fd"))
    server = ZdsServer(sock_path, lambda: [pod("a")])
    await server.start()
    client = InPodClient(sock_path, Recorder())
    task = asyncio.create_task(client.run())
    await asyncio.wait_for(server.connected.wait(), 5)
    for i in range(20):
        await server.add(pod(f"p{i}"))
    client.stop()
    await server.close()
    await asyncio.wait_for(task, 5)
    assert len(os.listdir("/proc/self/fd")) <= before


async def test_adds_go_to_every_worker_of_the_newest_instance(sock_path):
    server = ZdsServer(sock_path, list)
    await server.start()
    workers = [Recorder() for _ in range(3)]
    clients = [InPodClient(sock_path, w, instance="zt-A") for w in workers[:2]]
    clients.append(InPodClient(sock_path, workers[2], instance="zt-B"))   # a newer ztunnel
    tasks = []
    try:
        for c in clients[:2]:
            tasks.append(asyncio.create_task(c.run()))
        await until(lambda: server.ztunnels == 2)
        await server.add(pod("p"))
        assert all(("add", "Kubernetes//Pod/default/p", "p") in w.events for w in workers[:2])
        tasks.append(asyncio.create_task(clients[2].run()))
        await until(lambda: server.instances == 2)
        await server.add(pod("q"))
        assert ("add", "Kubernetes//Pod/default/q", "q") in workers[2].events
        assert not any(e[:2] == ("add", "Kubernetes//Pod/default/q") for w in workers[:2] for e in w.events)
    finally:
        for c in clients:
            c.stop()
        await server.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
