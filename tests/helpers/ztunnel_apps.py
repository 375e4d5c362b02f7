"""Test applications behind the ztunnels (run as real processes).

    python -m tests.helpers.ztunnel_apps serve --bind IP:PORT --name NAME

One asyncio server, four behaviours chosen by the first bytes a client sends:
- `GET ` / `HEAD`: a minimal HTTP/1.1 answer "hello from NAME" (for curl);
- `XFER <n> <seed>\n`: read n bytes (until the client's half-close), answer
  "<sha256 of them>\n" then n pseudo-random bytes from <seed>, then FIN —
  byte-exact transfers both ways with half-close;
- `RSET`: reset the connection (SO_LINGER 0, close) without reading what
  follows: a destination that drops bytes it was sent;
- anything else: echo until EOF, then FIN.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import socket
import struct
import sys

CHUNK = 1 << 20        # 1 MiB writes: large enough that Python overhead is small


def pattern(seed: int, size: int):
    """The deterministic byte stream both sides can regenerate."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


async def _xfer(line: bytes, reader, writer) -> None:
    _, n_s, seed_s = line.split()
    n, seed = int(n_s), int(seed_s)
    h = hashlib.sha256()
    got = 0
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        h.update(data)
        got += len(data)
    writer.write(f"{h.hexdigest()} {got}\n".encode())
    for block in pattern(seed, n):
        writer.write(block)
        await writer.drain()
    writer.write_eof()


async def _http(first: bytes, reader, writer, name: str) -> None:
    buf = first
    while b"\r\n\r\n" not in buf:
        more = await reader.read(65536)
        if not more:
            return
        buf += more
    body = f"hello from {name}\n".encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                 % len(body) + body)
    await writer.drain()


async def _handle(reader, writer, name: str) -> None:
    try:
        first = await reader.read(4)
        if first in (b"GET ", b"HEAD"):
            await _http(first, reader, writer, name)
        elif first == b"RSET":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        elif first == b"XFER":
            line = first + await reader.readline()
            await _xfer(line, reader, writer)
        else:
            data = first
            while data:
                writer.write(data)
                await writer.drain()
                data = await reader.read(65536)
            if writer.can_write_eof():
                writer.write_eof()
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, name: str) -> None:
    server = await asyncio.start_server(lambda r, w: _handle(r, w, name), host, port,
                                        reuse_address=True, backlog=4096)
    print(f"listening {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def xfer_client(sock, size: int, seed: int) -> tuple[str, str, int]:
    """Run one XFER on a connected blocking socket.

    Returns:
        (sha256 the server reported for our bytes, sha256 of what we received,
         number of bytes received).
    """
    sock.sendall(f"XFER {size} {seed + 1}\n".encode())
    for block in pattern(seed, size):
        sock.sendall(block)
    import socket as _s
    sock.shutdown(_s.SHUT_WR)
    f = sock.makefile("rb")
    line = f.readline().decode()
    h = hashlib.sha256()
    n = 0
    while True:
        data = f.read(CHUNK)
        if not data:
            break
        h.update(data)
        n += len(data)
    return line.split()[0], h.hexdigest(), n


def expected_hash(seed: int, size: int) -> str:
    h = hashlib.sha256()
    for block in pattern(seed, size):
        h.update(block)
    return h.hexdigest()


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--name", default="app")
    a = p.parse_args(argv)
    host, port = a.bind.rsplit(":", 1)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(host, int(port), a.name))


if __name__ == "__main__":
    sys.exit(main())
