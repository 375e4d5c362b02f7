"""A TCP echo app for exercising the supervisor (tests, `python -m tests.helpers.shards_echo`).

Line protocol, one command per line:
    pid            -> "<pid> <worker_id> <generation>\\n"
    sleep <secs>   -> "sleeping\\n" at once (the worker has the request), then
                      waits, then "slept\\n" (a long-lived connection for drains)
    hang           -> blocks the worker's event loop (only with --test-hooks)
    crash          -> the worker exits at once, code 70 (only with --test-hooks)
    anything else  -> echoed back

`--fail-boot` makes every worker fail in `start()`, for the halt test;
`--fail-boot-on-reload` only the workers of a SIGHUP roll.
Each connection records Istio's TCP metrics with reporter="destination".
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass

import click

from shoal.shards import exitcodes
from shoal.shards.app import App, WorkerContext
from shoal.shards.listener import stream_protocol
from shoal.shards.options import SupervisorOptions, supervisor_options
from shoal.shards.runner import run_app

# A line longer than this is echoed in pieces' worth of limit: protects the
# worker from a client sending an endless line.
MAX_LINE = 64 * 1024
LABELS = {"reporter": "destination", "request_protocol": "tcp", "response_flags": "-",
          "destination_workload": "shards-echo", "destination_app": "shards-echo"}


@dataclass(frozen=True, slots=True, kw_only=True)
class EchoOptions:
    host: str = "127.0.0.1"
    port: int = 0            # 0: no echo listener (admin ports only)
    test_hooks: bool = False
    fail_boot: bool = False
    fail_boot_on_reload: bool = False


class EchoApp(App):
    name = "shards-echo"

    def __init__(self, options: EchoOptions) -> None:
        self.options = options   # pre-fork: nothing else

    async def start(self, ctx: WorkerContext) -> None:
        if self.options.fail_boot:
            raise RuntimeError("--fail-boot: refusing to start (test hook)")
        if self.options.fail_boot_on_reload and ctx.generation > 1:
            raise RuntimeError("--fail-boot-on-reload: refusing to start after SIGHUP (test hook)")
        self.ctx = ctx
        m = ctx.metrics
        # Bound once: the label values never change for this app.
        self.m_opened, self.m_closed = m.child(m.tcp_opened, LABELS), m.child(m.tcp_closed, LABELS)
        self.m_sent, self.m_received = m.child(m.tcp_sent, LABELS), m.child(m.tcp_received, LABELS)
        if self.options.port:
            ctx.serve(self.options.host, self.options.port, stream_protocol(self.handle, MAX_LINE),
                      name="echo")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.m_opened.inc()
        sent = received = 0
        try:
            while line := await reader.readline():
                received += len(line)
                if line.startswith(b"sleep "):
                    # Tell the client the request arrived: tests await this
                    # instead of sleeping before they signal the supervisor.
                    writer.write(b"sleeping\n")
                    sent += len(b"sleeping\n")
                    await writer.drain()
                reply = await self.command(line.strip())
                writer.write(reply)
                sent += len(reply)
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self.m_closed.inc()
            self.m_received.inc(received)
            self.m_sent.inc(sent)
            self.ctx.count_bytes(sent, received)
            writer.close()

    async def command(self, line: bytes) -> bytes:
        if line == b"pid":
            return f"{os.getpid()} {self.ctx.worker_id} {self.ctx.generation}\n".encode()
        if line.startswith(b"sleep "):
            await asyncio.sleep(float(line[6:]))
            return b"slept\n"
        if self.options.test_hooks and line == b"hang":
            while True:          # a stuck event loop: heartbeats stop
                time.sleep(3600)
        if self.options.test_hooks and line == b"crash":
            os._exit(exitcodes.WORKER_CRASH)
        return line + b"\n"

    def admin_sections(self):
        return {"echo": lambda: {"port": self.options.port, "test_hooks": self.options.test_hooks}}


@click.command()
@supervisor_options
@click.option("--echo-host", default="127.0.0.1", show_default=True)
@click.option("--echo-port", type=int, default=0, help="TCP echo listener (0: none).")
@click.option("--test-hooks", is_flag=True, help="Allow the 'hang' and 'crash' commands.")
@click.option("--fail-boot", is_flag=True, help="Every worker fails to start (test hook).")
@click.option("--fail-boot-on-reload", is_flag=True,
              help="Workers started by a SIGHUP roll fail to start (test hook).")
def main(supervisor: SupervisorOptions, echo_host: str, echo_port: int, test_hooks: bool,
         fail_boot: bool, fail_boot_on_reload: bool) -> None:
    """Run the shards echo app under the supervisor."""
    opts = EchoOptions(host=echo_host, port=echo_port, test_hooks=test_hooks, fail_boot=fail_boot,
                       fail_boot_on_reload=fail_boot_on_reload)
    sys.exit(run_app(lambda: EchoApp(opts), supervisor))


if __name__ == "__main__":
    main()
