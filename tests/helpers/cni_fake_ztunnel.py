"""A stand-in ztunnel for CNI tests: the real InPodClient, plus listeners on
15001/15006 inside each added pod that answer `orig=IP:PORT\\n` (the
SO_ORIGINAL_DST they saw). Events are appended to a JSON-lines file.

    python -m tests.helpers.cni_fake_ztunnel ZDS_SOCKET EVENTS_FILE
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from shoal.ztunnel.inpod import InPodClient, SnapshotDone, WorkloadAdded, WorkloadDeleted, WorkloadKept
from shoal.core.netns import NetnsSocketFactory
from shoal.ztunnel.origdst import original_dst


class Fake:
    def __init__(self, events_path: str) -> None:
        self.events_path = events_path
        self.servers: dict[str, list[asyncio.AbstractServer]] = {}

    def record(self, **ev) -> None:
        with open(self.events_path, "ab") as f:
            f.write(orjson.dumps(ev) + b"\n")

    async def on_conn(self, reader, writer) -> None:
        try:
            ip, port = original_dst(writer.get_extra_info("socket"))
            writer.write(f"orig={ip}:{port}\n".encode())
            await writer.drain()
        finally:
            writer.close()

    async def __call__(self, ev) -> None:
        if isinstance(ev, WorkloadAdded):
            if ev.uid not in self.servers:
                f = NetnsSocketFactory(ev.netns_fd)
                self.servers[ev.uid] = [
                    await asyncio.start_server(self.on_conn, sock=f.listener("0.0.0.0", port))
                    for port in (15001, 15006)]
            self.record(type="add", uid=ev.uid, sa=ev.info.service_account)
        elif isinstance(ev, WorkloadDeleted):
            for s in self.servers.pop(ev.uid, []):
                s.close()
            self.record(type="del", uid=ev.uid)
        elif isinstance(ev, WorkloadKept):
            self.record(type="keep", uid=ev.uid)
        elif isinstance(ev, SnapshotDone):
            self.record(type="snapshot")


async def main() -> None:
    client = InPodClient(sys.argv[1], Fake(sys.argv[2]), backoff_initial=0.05, backoff_max=0.5)
    await client.run()


if __name__ == "__main__":
    asyncio.run(main())
