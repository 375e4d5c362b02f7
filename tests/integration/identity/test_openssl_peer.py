"""`openssl s_client` against an HBONE server context (TLS 1.3, h2, mutual, AES-GCM)."""

import asyncio
import shutil
import subprocess

import pytest

from shoal.core.identity import tls
from tests.helpers.pki import TestPKI, write_pem
from tests.integration.identity.conftest import connect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")]

SERVER = "spiffe://cluster.local/ns/a/sa/server"
CLIENT = "spiffe://cluster.local/ns/b/sa/client"


@pytest.fixture(scope="module")
def pki():
    return TestPKI()


async def s_client(port, files, *extra):
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "h2", "-noservername",
            "-CAfile", str(files.ca), "-verify_return_error", "-ign_eof", *extra]
    p = await asyncio.create_subprocess_exec(*args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(p.communicate(b"hello\n"), 20)
    return p.returncode, out.decode(errors="replace")


@pytest.fixture
async def server(pki, echo_server):
    return await echo_server(tls.server_context(pki.issue(SERVER)), once=True)


async def test_shows_tls13_aes_gcm_and_alpn_h2(pki, server, tmp_path):
    files = write_pem(pki.issue(CLIENT), tmp_path, "client")
    rc, out = await s_client(server.port, files, "-cert", str(files.cert), "-key", str(files.key))
    assert rc == 0, out
    assert "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384" in out
    assert "ALPN protocol: h2" in out
    assert "hello" in out.split("---")[-1]          # echoed after the handshake
    assert [i.uri for i in server.accepted] == [CLIENT]


async def test_refuses_a_client_without_certificate(pki, server, tmp_path):
    files = write_pem(pki.issue(CLIENT), tmp_path, "client")
    rc, out = await s_client(server.port, files)
    assert rc != 0
    assert server.accepted == []
    assert "hello" not in out.split("---")[-1]


@pytest.mark.parametrize("extra", [["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"], ["-tls1_2"]],
                         ids=["chacha20", "tls1.2"])
async def test_refuses_chacha20_and_tls12(pki, server, tmp_path, extra):
    files = write_pem(pki.issue(CLIENT), tmp_path, "client")
    rc, out = await s_client(server.port, files, "-cert", str(files.cert), "-key", str(files.key), *extra)
    assert rc != 0
    assert "Cipher is (NONE)" in out
    assert server.accepted == []


async def test_aes128_gcm_is_accepted(pki, server, tmp_path):
    files = write_pem(pki.issue(CLIENT), tmp_path, "client")
    rc, out = await s_client(server.port, files, "-cert", str(files.cert), "-key", str(files.key),
                             "-ciphersuites", "TLS_AES_128_GCM_SHA256")
    assert rc == 0 and "Cipher is TLS_AES_128_GCM_SHA256" in out


async def test_client_hello_has_no_sni_offers_h2_and_only_aes_gcm(pki, tmp_path):
    # openssl s_server -trace prints every extension and suite of the ClientHello.
    sfiles = write_pem(pki.issue(SERVER), tmp_path, "server")
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", str(sfiles.cert), "-key",
        str(sfiles.key), "-CAfile", str(sfiles.ca), "-Verify", "1", "-alpn", "h2", "-tls1_3",
        "-naccept", "1", "-trace", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        port = None
        while port is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert line, "s_server exited before listening"
            if line.startswith("ACCEPT"):
                port = int(line.rsplit(":", 1)[1])
        reader, writer, _ = await connect(port, tls.client_context(pki.issue(CLIENT)))
        obj = writer.get_extra_info("ssl_object")
        assert obj.selected_alpn_protocol() == "h2" and obj.version() == "TLSv1.3"
        writer.close()
        proc.stdin.close()
        out = (await asyncio.wait_for(proc.stdout.read(), 10)).decode()
        hello = out[out.index("ClientHello"):out.index("ServerHello")]
        assert "extension_type=server_name" not in hello
        assert "extension_type=application_layer_protocol_negotiation" in hello
        assert "TLS_AES_256_GCM_SHA384" in hello and "TLS_AES_128_GCM_SHA256" in hello
        assert "CHACHA20" not in hello
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
