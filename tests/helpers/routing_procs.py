"""Child processes for routing integration tests (run as `python -m tests.helpers.routing_procs`).

Roles:
  stress-writer NAME N_UPDATES STOPFILE  apply >= N_UPDATES generations, then until STOPFILE exists
  stress-reader NAME N_LOOKUPS           N_LOOKUPS checked lookups; prints a JSON summary
  follow NAME KEY_KIND ARG SECONDS       poll a RoutingView; prints JSON lines of what it saw
  idle-reader NAME TICK                  no lookups; `quiesce()` every TICK s (a worker's tick)
                                         until stdin closes; TICK 0: never (a parked reader)
"""

from __future__ import annotations

import os
import random
import struct
import sys
import time
import zlib

import orjson

N_KEYS = 1000
PAIR_KEYS = (b"pair/a", b"pair/b")   # both rewritten in every generation
_VAL = struct.Struct("<QI")


def make_value(gen: int, i: int, rng: random.Random) -> bytes:
    payload = _VAL.pack(gen, i) + rng.randbytes(rng.randint(8, 400))
    return payload + struct.pack("<I", zlib.crc32(payload))


def check_value(data: bytes) -> int:
    payload, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
    if zlib.crc32(payload) != crc:
        raise AssertionError("checksum mismatch (torn read)")
    return _VAL.unpack_from(payload)[0]


def stress_writer(name: str, n_updates: int, stopfile: str) -> None:
    from shoal.routing.shm import TableWriter
    w = TableWriter.attach(name)
    rng = random.Random(1)
    w.apply({f"k/{i}": make_value(1, i, rng) for i in range(N_KEYS)} |
            {k.decode(): make_value(1, 0, rng) for k in PAIR_KEYS})
    done = 0
    while done < n_updates or not os.path.exists(stopfile):
        gen = w.generation + 1
        changes = {f"k/{rng.randrange(N_KEYS)}": make_value(gen, 0, rng) for _ in range(8)}
        if rng.random() < 0.1:           # deletes and re-inserts too
            changes[f"k/{rng.randrange(N_KEYS)}"] = None
        for k in PAIR_KEYS:
            changes[k.decode()] = make_value(gen, 0, rng)
        w.apply(changes)
        done += 1
    print(orjson.dumps({"updates": done, "stats": w.stats()}).decode(), flush=True)
    w.close()


def stress_reader(name: str, n_lookups: int) -> None:
    from shoal.routing.shm import TableReader, lookup, split_root
    r = TableReader(name)
    rng = random.Random(os.getpid())
    keys = [f"k/{i}".encode() for i in range(N_KEYS)]
    mm = r.mm
    lookups = torn = mixed = gens = 0
    last_gen = -1
    while lookups < n_lookups:
        gen, root = split_root(r.root_word())
        r.announce(gen)
        if gen != last_gen:
            gens += 1
            last_gen = gen
        a = lookup(mm, root, PAIR_KEYS[0])
        b = lookup(mm, root, PAIR_KEYS[1])
        lookups += 2
        if a is None or b is None:
            if gen > 0:
                mixed += 1          # the pair exists from generation 1 on
            continue
        try:
            ga, gb = check_value(a), check_value(b)
            if not (ga == gb == gen):
                mixed += 1
            for _ in range(8):
                v = lookup(mm, root, keys[rng.randrange(N_KEYS)])
                lookups += 1
                if v is not None and check_value(v) > gen:
                    mixed += 1
        except AssertionError:
            torn += 1
    r.close()
    print(orjson.dumps({"lookups": lookups, "torn": torn, "mixed": mixed,
                        "generations_seen": gens}).decode(), flush=True)


def follow(name: str, kind: str, arg: str, seconds: float) -> None:
    """Print one JSON line per generation change with the lookup result."""
    from shoal.routing.runtime import attach_view
    view = attach_view(name)
    print(orjson.dumps({"ready": True}).decode(), flush=True)
    deadline = time.monotonic() + seconds
    last = None
    lookups = misses = 0
    while time.monotonic() < deadline:
        if kind == "vip":
            svc = view.service_by_vip(arg)
            found = svc.name if svc else None
        else:
            w = view.workload_by_ip(arg)
            found = w.name if w else None
        lookups += 1
        misses += found is None
        gen = view.generation
        if (gen, found) != last:
            last = (gen, found)
            print(orjson.dumps({"t": time.time(), "generation": gen, "found": found}).decode(),
                  flush=True)
        time.sleep(0.0005)
    print(orjson.dumps({"done": True, "lookups": lookups, "misses": misses}).decode(), flush=True)
    view.close()


def idle_reader(name: str, tick: float) -> None:
    import select
    from shoal.routing.runtime import attach_view
    view = attach_view(name)
    print(orjson.dumps({"ready": True, "pid": os.getpid()}).decode(), flush=True)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], tick or None)
        if ready and not sys.stdin.buffer.read1(4096):
            break
        if tick:
            view.quiesce()
    view.close()


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "stress-writer":
        stress_writer(args[0], int(args[1]), args[2])
    elif role == "stress-reader":
        stress_reader(args[0], int(args[1]))
    elif role == "follow":
        follow(args[0], args[1], args[2], float(args[3]))
    elif role == "idle-reader":
        idle_reader(args[0], float(args[1]))
    else:
        raise SystemExit(f"unknown role {role}")
