"""shards.heartbeat: slots, stamps and the shared log-level word."""

import os

import pytest

from shoal.shards import heartbeat
from shoal.shards.heartbeat import HeartbeatTable


@pytest.fixture
def table():
    t = HeartbeatTable.create(slots=8)
    yield t
    t.unlink()


def test_slots_allocate_stamp_release(table):
    a = table.allocate()
    b = table.allocate()
    assert a != b
    table.assign(a, 1234, 10.0)
    assert table.last(a) == 10.0
    other = HeartbeatTable.attach(table.name)     # a worker's view
    other.stamp(a, 12.5)
    assert table.last(a) == 12.5
    table.release(a)
    assert table.last(a) == 0.0
    assert table.allocate() == a                   # slots are reused
    other.close()


def test_all_slots_in_use_is_an_error(table):
    for _ in range(8):
        table.allocate()
    with pytest.raises(RuntimeError, match="heartbeat slots"):
        table.allocate()


def test_log_control_word_sequence(table):
    assert table.log_control() == (0, 0)
    table.set_log_level(10)
    worker = HeartbeatTable.attach(table.name)
    assert worker.log_control() == (10, 1)
    worker.set_log_level(20)          # a worker's /logging changes it for all
    assert table.log_control() == (20, 2)
    worker.close()


def test_unlink_leaves_nothing(table):
    path = "/dev/shm" + table.name
    assert os.path.exists(path)
    table.unlink()
    assert not os.path.exists(path)


def test_attach_refuses_a_foreign_segment():
    import posix_ipc
    name = f"/shoal-test-foreign-{os.getpid()}"
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=4096)
    shm.close_fd()
    try:
        with pytest.raises(ValueError, match="not a shoal heartbeat table"):
            HeartbeatTable.attach(name)
    finally:
        posix_ipc.unlink_shared_memory(name)


def test_cleanup_stale_removes_tables_of_dead_pids():
    import posix_ipc
    dead = 2 ** 22 + 12345            # above pid_max's default: never alive
    name = f"{heartbeat.PREFIX}{dead}-deadbeef"
    posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=64).close_fd()
    assert name[1:] in heartbeat.cleanup_stale()
    assert not os.path.exists("/dev/shm" + name)
