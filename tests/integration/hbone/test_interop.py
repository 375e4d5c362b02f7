"""HBONE against independent implementations: nghttpx (both roles), openssl
s_client; and keepalive against a real, SIGSTOPped peer process."""

import asyncio
import os
import shutil
import signal
import subprocess

import pytest

from shoal.core.hbone.errors import StreamResetError
from shoal.core.hbone.pool import HbonePool
from shoal.core.hbone.settings import HboneSettings
from shoal.core.identity.tls import client_context
from tests.helpers.hbone_net import CLIENT_ID, SERVER_ID, HbonePair, digest, start_echo
from tests.helpers.ports import free_port
from tests.helpers.hbone_procs import start_nghttpx, start_shoal_tool, start_tinyproxy, stop
from tests.helpers.pki import TestPKI, write_pem
from tests.helpers.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {missing} (make host-deps)")


@pytest.fixture
def pki_files(tmp_path):
    pki = TestPKI()
    server, client = pki.issue(SERVER_ID), pki.issue(CLIENT_ID)
    return pki, server, client, write_pem(server, tmp_path, "server"), \
        write_pem(client, tmp_path, "client")


async def _read_exactly(stream, n):
    got = bytearray()
    while len(got) < n:
        data = await asyncio.wait_for(stream.read(), 10)
        assert data, "stream ended early"
        got += data
    return bytes(got)


async def test_shoal_client_through_nghttpx_forward_proxy(tmp_path, pki_files):
    """shoal HBONE client -> nghttpx (HTTP/2 CONNECT, mTLS) -> tinyproxy -> echo."""
    _need("nghttpx", "tinyproxy")
    pki, server, client, sfiles, _ = pki_files
    echo, echo_port = await start_echo()
    tp, tp_port = start_tinyproxy(tmp_path, echo_port)
    port = free_port()
    ngx = start_nghttpx(["-s", f"--frontend=127.0.0.1,{port}", f"--backend=127.0.0.1,{tp_port}",
                         "--verify-client", f"--verify-client-cacert={sfiles.ca}",
                         f"--cacert={sfiles.ca}", "--tls-min-proto-version=TLSv1.3",
                         str(sfiles.key), str(sfiles.cert)], port, tmp_path)
    ctx = client_context(client)
    pool = HbonePool(lambda src: ctx)
    try:
        stream = await pool.open(src=CLIENT_ID, dst_identities=(SERVER_ID,),
                                 address=("127.0.0.1", port), authority=f"127.0.0.1:{echo_port}")
        assert "nghttpx" in stream.response_headers.get("via", "")
        payload = os.urandom(3 * 1024 * 1024)
        writer = asyncio.ensure_future(stream.write(payload))
        got = await _read_exactly(stream, len(payload))
        await writer
        assert digest(got) == digest(payload)
        stream.close()
    finally:
        await pool.close()
        stop(ngx)
        stop(tp)
        echo.close()


async def test_nghttpx_as_connect_client_to_shoal_server(tmp_path, pki_files):
    """HTTP/1.1 CONNECT -> nghttpx (HTTP/2 backend, mTLS client cert) -> shoal server -> echo."""
    _need("nghttpx")
    pki, server, client, _, cfiles = pki_files
    async with HbonePair(pki=pki, server_cert=server, client_cert=client) as rig:
        port = free_port()
        ngx = start_nghttpx(["-s", f"--frontend=127.0.0.1,{port};no-tls",
                             f"--backend=127.0.0.1,{rig.port};;proto=h2;tls",
                             f"--client-private-key-file={cfiles.key}",
                             f"--client-cert-file={cfiles.cert}", "--insecure"], port, tmp_path)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"CONNECT {rig.target_authority} HTTP/1.1\r\n"
                         f"Host: {rig.target_authority}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            payload = os.urandom(2 * 1024 * 1024)
            writer.write(payload)
            got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
            assert digest(got) == digest(payload)
            req = rig.requests[0]
            assert req.authority == rig.target_authority
            assert str(req.peer_identity) == CLIENT_ID
            writer.close()
        finally:
            stop(ngx)


def _s_client(port, *extra, timeout=10):
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "h2",
           "-noservername", *extra]
    return subprocess.run(cmd, input=b"", capture_output=True, timeout=timeout)


async def test_openssl_s_client_sees_tls13_alpn_h2(pki_files):
    _need("openssl")
    pki, server, client, _, cfiles = pki_files
    async with HbonePair(pki=pki, server_cert=server, client_cert=client) as rig:
        res = await asyncio.to_thread(_s_client, rig.port, "-cert", str(cfiles.cert), "-key",
                                      str(cfiles.key), "-CAfile", str(cfiles.ca))
        out = res.stdout.decode("latin-1")
        assert "TLSv1.3" in out
        assert "ALPN protocol: h2" in out
        assert "Verify return code: 0 (ok)" in out
        assert "GCM" in out


async def test_openssl_s_client_without_cert_is_refused(pki_files, hbone_logs):
    _need("openssl")
    pki, server, client, _, cfiles = pki_files
    async with HbonePair(pki=pki, server_cert=server, client_cert=client) as rig:
        res = await asyncio.to_thread(_s_client, rig.port, "-CAfile", str(cfiles.ca),
                                      "-ign_eof")
        text = (res.stdout + res.stderr).decode("latin-1").lower()
        assert "certificate required" in text          # TLS 1.3 alert 116
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while not any("TLS handshake from" in r.getMessage() for r in hbone_logs.records):
            assert loop.time() < end
            await asyncio.sleep(0.02)


async def test_openssl_tls12_is_refused(pki_files):
    _need("openssl")
    pki, server, client, _, cfiles = pki_files
    async with HbonePair(pki=pki, server_cert=server, client_cert=client) as rig:
        res = await asyncio.to_thread(_s_client, rig.port, "-tls1_2", "-cert", str(cfiles.cert),
                                      "-key", str(cfiles.key), "-CAfile", str(cfiles.ca))
        assert "TLSv1.2" not in res.stdout.decode("latin-1").split("Cipher is")[-1][:40]
        assert res.returncode != 0 or "Cipher is (NONE)" in res.stdout.decode("latin-1")


async def test_keepalive_detects_a_stopped_peer(tmp_path, pki_files):
    """The peer process is SIGSTOPped: its kernel still ACKs TCP, only the PING
    keepalive can tell; the stream must fail within interval + timeout."""
    pki, server, client, sfiles, _ = pki_files
    echo, echo_port = await start_echo()
    proc, port = start_shoal_tool(["exit", "--listen", "127.0.0.1:0", "--cert", str(sfiles.cert),
                                   "--key", str(sfiles.key), "--ca", str(sfiles.ca)],
                                  tmp_path / "exit.log")
    ctx = client_context(client)
    settings = HboneSettings(keepalive_interval=0.2, keepalive_timeout=0.6)
    pool = HbonePool(lambda src: ctx, settings=settings)
    try:
        stream = await pool.open(src=CLIENT_ID, dst_identities=(SERVER_ID,),
                                 address=("127.0.0.1", port), authority=f"127.0.0.1:{echo_port}")
        await stream.write(b"ping?")
        assert await _read_exactly(stream, 5) == b"ping?"
        await asyncio.sleep(0.6)                 # several keepalive rounds pass while alive
        os.kill(proc.pid, signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(StreamResetError) as info:
            await asyncio.wait_for(stream.read(), 5)
        assert "PING" in info.value.reason
        assert loop.time() - t0 < 2.0
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop(proc)
        await pool.close()
        echo.close()


async def test_tools_pair_plaintext_in_plaintext_out(tmp_path, pki_files):
    """`python -m tests.helpers.hbone_tools` entry + exit processes: plaintext -> HBONE -> plaintext."""
    pki, server, client, sfiles, cfiles = pki_files
    echo, echo_port = await start_echo()
    exit_, eport = start_shoal_tool(["exit", "--listen", "127.0.0.1:0", "--cert", str(sfiles.cert),
                                     "--key", str(sfiles.key), "--ca", str(sfiles.ca)],
                                    tmp_path / "exit.log")
    entry, nport = start_shoal_tool(["entry", "--listen", "127.0.0.1:0", "--peer",
                                     f"127.0.0.1:{eport}", "--authority",
                                     f"127.0.0.1:{echo_port}", "--expect", SERVER_ID, "--cert",
                                     str(cfiles.cert), "--key", str(cfiles.key), "--ca",
                                     str(cfiles.ca)], tmp_path / "entry.log")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", nport)
        payload = os.urandom(4 * 1024 * 1024)
        writer.write(payload)
        writer.write_eof()                      # half-close travels to the echo server
        got = await asyncio.wait_for(reader.read(-1), 20)
        assert digest(got) == digest(payload)
        writer.close()
    finally:
        stop(entry)
        stop(exit_)
        echo.close()


async def test_tools_pair_with_two_processes_per_side(tmp_path, pki_files):
    """`--processes 2`: two workers per side on one port (SO_REUSEPORT), each
    carrying tunnels; the workers go when the tool is stopped."""
    pki, server, client, sfiles, cfiles = pki_files
    echo, echo_port = await start_echo()
    exit_, eport = start_shoal_tool(["exit", "--listen", "127.0.0.1:0", "--cert", str(sfiles.cert),
                                     "--key", str(sfiles.key), "--ca", str(sfiles.ca),
                                     "--processes", "2"], tmp_path / "exit.log")
    entry, nport = start_shoal_tool(["entry", "--listen", "127.0.0.1:0", "--peer",
                                     f"127.0.0.1:{eport}", "--authority",
                                     f"127.0.0.1:{echo_port}", "--expect", SERVER_ID, "--cert",
                                     str(cfiles.cert), "--key", str(cfiles.key), "--ca",
                                     str(cfiles.ca), "--processes", "2"], tmp_path / "entry.log")
    workers = entry.pids + exit_.pids
    try:
        assert len(entry.pids) == len(exit_.pids) == 2
        assert entry.pids[0] == entry.pid and exit_.pids[0] == exit_.pid

        async def through(size: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", nport)
            payload = os.urandom(size)
            writer.write(payload)
            writer.write_eof()
            got = await asyncio.wait_for(reader.read(-1), 20)
            assert digest(got) == digest(payload)
            writer.close()
        before = [_cpu_ticks(pid) for pid in workers]
        # 32 connections from distinct ports: the kernel's hash puts some on
        # each entry worker (all on one: 2^-31); 1 MiB each way costs every
        # worker that carries some well over a clock tick. Each entry worker
        # has its own pool, so the exit gets two HBONE connections, which the
        # hash may put on one exit worker: the exit is only checked as a group.
        await asyncio.gather(*(through(1024 * 1024) for _ in range(32)))
        used = [_cpu_ticks(pid) - t0 for pid, t0 in zip(workers, before)]
        assert all(used[:2]), f"an entry worker carried nothing: {used[:2]} ticks"
        assert sum(used[2:]), "the exit workers carried nothing"
    finally:
        stop(entry)
        stop(exit_)
        echo.close()
    for pid in workers[1:2] + workers[3:]:          # the forked ones die with their parent
        await until(lambda: _gone(pid), timeout=10, what=f"worker {pid} to exit")


def _cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _gone(pid: int) -> bool:
    """Exited (a zombie until its parent reaps it, or gone)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
