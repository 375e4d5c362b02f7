"""An HBONE pair for debugging and load runs: plaintext -> HBONE -> plaintext.

    # exit: terminate HBONE, forward each CONNECT to its :authority (or --target)
    python -m tests.helpers.hbone_tools exit --listen 127.0.0.1:15008 \
        --cert server-cert.pem --key server-key.pem --ca ca.pem [--target 127.0.0.1:5201]
    # entry: accept plaintext, open one HBONE tunnel per TCP connection
    python -m tests.helpers.hbone_tools entry --listen 127.0.0.1:15001 --peer 127.0.0.1:15008 \
        --authority 127.0.0.1:5201 --expect spiffe://cluster.local/ns/x/sa/y \
        --cert client-cert.pem --key client-key.pem --ca ca.pem

One process, one event loop (uvloop), like one shoal worker; `--processes N`
runs N of them on one port (SO_REUSEPORT, the kernel spreads connections by
hash, as shoal's shards do), each with its own HBONE pool or server. It prints
`READY <port> <pid>,<pid>...` on stdout once every process listens (tests and
benchmarks wait for it; the pids are for per-process CPU accounting).
The key file is only read here because this is a test/bench tool; shoal's
proxies keep keys in memory (core.identity).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

from cryptography.hazmat.primitives import serialization

from shoal.core import log as shoal_log
from shoal.core.hbone.pool import HbonePool
from shoal.core.overload import MAX_PENDING_HANDSHAKES, Overload
from shoal.core.hbone.server import Accept, HboneServer, Reject
from shoal.core.hbone.settings import POOL_SPREAD_CONNECTIONS, POOL_SPREAD_STREAMS, HboneSettings
from shoal.core.identity.certs import WorkloadCert, load_pem_certs
from shoal.core.identity.tls import client_context, server_context
from shoal.core.pipe import PipeReset, TcpEnd, connect_tcp, pipe

LOG = shoal_log.get("hbone.tools")
_CONNS: list = []


class _PoolConns:
    def __init__(self, pool) -> None:
        self.pool = pool

    def __iter__(self):
        return (c for v in self.pool._conns.values() for c in v)


def load_cert(cert: str, key: str, ca: str) -> WorkloadCert:
    chain = load_pem_certs(open(cert, "rb").read())
    pkey = serialization.load_pem_private_key(open(key, "rb").read(), password=None)
    return WorkloadCert.build(pkey, chain[0], chain[1:], load_pem_certs(open(ca, "rb").read()))


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _settings(args) -> HboneSettings:
    return HboneSettings(keepalive_interval=args.keepalive_interval,
                         keepalive_timeout=args.keepalive_timeout,
                         pool_spread_connections=args.pool_spread_connections,
                         pool_spread_streams=args.pool_spread_streams)


async def run_exit(args) -> None:
    cert = load_cert(args.cert, args.key, args.ca)
    target = _hostport(args.target) if args.target else None

    async def handler(req):
        host, port = target or (req.host, req.port)
        try:
            upstream = await connect_tcp(host, port, timeout=5)
        except OSError as e:
            return Reject(status=503, reason=f"upstream {host}:{port} unreachable: {e}")
        return Accept(upstream=upstream)

    overload = Overload(max_connections=args.max_connections,
                        max_pending_handshakes=args.max_pending_handshakes)
    server = HboneServer(handler, settings=_settings(args), overload=overload)
    _CONNS.append(server.connections)
    host, port = _hostport(args.listen)
    listener = await server.listen(host, port, server_context(cert),
                                   trust_domain=cert.trust_domain, reuse_port=args.reuse_port)
    args.ready(listener.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


async def run_entry(args) -> None:
    cert = load_cert(args.cert, args.key, args.ca)
    ctx = client_context(cert)
    pool = HbonePool(lambda _src: ctx, settings=_settings(args))
    _CONNS.append(_PoolConns(pool))
    peer = _hostport(args.peer)
    loop = asyncio.get_running_loop()

    async def tunnel(client: TcpEnd) -> None:
        await client.made
        try:
            stream = await pool.open(src=cert.identity, dst_identities=args.expect, address=peer,
                                     authority=args.authority,
                                     forwarded_for=client.transport.get_extra_info("peername"))
        except Exception as e:
            LOG.warning("tunnel to %s failed: %s", args.authority, e)
            client.abort()
            return
        try:
            await pipe(client, stream)
        except PipeReset as e:
            LOG.info("tunnel to %s reset: %r", args.authority, e.__cause__ or e)

    def factory() -> TcpEnd:
        end = TcpEnd()
        loop.create_task(tunnel(end))
        return end

    host, port = _hostport(args.listen)
    server = await loop.create_server(factory, host, port, backlog=1024,
                                      reuse_port=args.reuse_port)
    args.ready(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def dump_state(conns) -> None:
    """SIGUSR1: print every connection's and stream's flow-control state (debugging)."""
    for conn in conns:
        h2c = conn.core._h2
        print(f"conn peer={conn.peer_address} can_write={conn.can_write.is_set()} "
              f"out_window={h2c.outbound_flow_control_window} "
              f"in_window={h2c._inbound_flow_control_window_manager.current_window_size} "
              f"buffered_out={conn.transport.get_write_buffer_size() if conn.transport else None}",
              file=sys.stderr, flush=True)
        for sid, st in conn.streams.items():
            print(f"  stream {sid} send_window={conn.core.send_window(sid)} "
                  f"queued={sum(len(d) for d, _ in st._chunks)} eof={st._eof} err={st._error} "
                  f"read_wait={st._read_waiter is not None} send_wait={st._send_waiter is not None}"
                  f" state={conn.core.stream_state(sid)}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """A forked worker gets SIGTERM when the parent goes (PR_SET_PDEATHSIG),
    so a killed parent leaves no worker holding the port."""
    import ctypes
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def fork_workers(args) -> list[int]:
    """`--processes N`: hold the port, fork N - 1 workers, and set `args.ready`.

    Forked before any event loop exists, so each worker starts its own. The
    port is held by a bound, non-listening SO_REUSEPORT socket until every
    process listens on it; the parent prints READY only then, so no connection
    meets a group that is still forming. Returns the children's pids (in the
    parent; [] in a child and with one process)."""
    if args.processes == 1:
        args.reuse_port = None
        args.ready = lambda port: print(f"READY {port} {os.getpid()}", flush=True)
        return []
    host, port = _hostport(args.listen)
    hold = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    hold.bind((host, port))
    port = hold.getsockname()[1]
    args.listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    args.reuse_port = True
    parent = os.getpid()
    rfd, wfd = os.pipe()
    children: list[int] = []
    for _ in range(args.processes - 1):
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            hold.close()
            _die_with_parent()
            if os.getppid() != parent:
                os._exit(1)                  # the parent died before prctl

            def child_ready(_port: int) -> None:
                os.write(wfd, b"r")
                os.close(wfd)
            args.ready = child_ready
            if args.profile:
                args.profile += f".{os.getpid()}"
            return []
        children.append(pid)
    os.close(wfd)

    def ready(port: int) -> None:
        # Each child writes one byte once it listens; EOF first means one died.
        for _ in children:
            if not os.read(rfd, 1):
                sys.exit("hbone_tools: a worker process did not start")
        os.close(rfd)
        hold.close()
        print(f"READY {port} {','.join(str(p) for p in (parent, *children))}", flush=True)
    args.ready = ready
    return children


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.helpers.hbone_tools", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=["entry", "exit"])
    p.add_argument("--listen", required=True, help="host:port (port 0: pick one)")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--peer", help="entry: the HBONE server host:port")
    p.add_argument("--authority", help="entry: CONNECT target ip:port")
    p.add_argument("--expect", action="append", default=[],
                   help="entry: acceptable server SPIFFE ID (repeatable)")
    p.add_argument("--target", help="exit: forward every tunnel here instead of :authority")
    p.add_argument("--max-connections", type=int, default=None,
                   help="exit: overload limit (default: core.overload)")
    p.add_argument("--max-pending-handshakes", type=int, default=MAX_PENDING_HANDSHAKES)
    p.add_argument("--keepalive-interval", type=float, default=10.0)
    p.add_argument("--keepalive-timeout", type=float, default=20.0)
    p.add_argument("--pool-spread-connections", type=int, default=POOL_SPREAD_CONNECTIONS,
                   help="entry: connections per key the pool spreads over (1: ztunnel's rule)")
    p.add_argument("--pool-spread-streams", type=int, default=POOL_SPREAD_STREAMS,
                   help="entry: streams per connection before the pool spreads to another")
    p.add_argument("--processes", type=int, default=1,
                   help="worker processes sharing the listening port (SO_REUSEPORT)")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--profile", help="write cProfile stats here on SIGTERM/SIGINT")
    args = p.parse_args(argv)
    if args.role == "entry" and not (args.peer and args.authority and args.expect):
        p.error("entry needs --peer, --authority and --expect")
    if args.processes < 1:
        p.error("--processes must be at least 1")
    children = fork_workers(args)
    shoal_log.setup(args.log_level)
    import uvloop
    profiler = None
    if args.profile:
        import cProfile
        import time
        # CPU time, not wall clock: the loop's idle waits would dominate otherwise.
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(run_entry(args) if args.role == "entry" else run_exit(args))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        loop.add_signal_handler(signal.SIGUSR1, lambda: [dump_state(c) for c in _CONNS])
        try:
            await task
        except asyncio.CancelledError:
            pass
    uvloop.run(run())
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    os._exit(0)          # do not wait for tunnels still open


if __name__ == "__main__":
    main()
