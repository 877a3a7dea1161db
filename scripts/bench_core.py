#!/usr/bin/env python
"""What one member's core costs per write without gRPC: the ceiling a multi-process
front end could reach.

Starts a single member in this process (real RocksDB, real raft log with fsync, the
real node loop), then drives ``EtcdServer.propose`` directly from C concurrent
coroutines (no client, no gRPC), for D seconds. Prints writes/s and the process's CPU
microseconds per write. Comparing that with the same member's CPU per put over gRPC
(``scripts/bench_compare.py`` prints server CPU) splits a put's cost into the part a
front-end process could take (gRPC and asyncio per RPC) and the part that stays on the
member's core (propose, raft, persist, apply).

    python scripts/bench_core.py --clients 128 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.internalpb.internal_pb2 import InternalRaftRequest
from datastore.server.config import add_serve_arguments, config_from_args
from datastore.testing.procs import free_port


async def run(clients: int, duration: float, val_size: int, key_space: int) -> dict[str, float]:
    from datastore.member import start_member

    data = tempfile.mkdtemp(prefix="bench-core-")
    cport, pport = free_port(), free_port()
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    ns = p.parse_args([
        "--data-dir", data, "--listen-client-urls", f"http://127.0.0.1:{cport}",
        "--advertise-client-urls", f"http://127.0.0.1:{cport}",
        "--listen-peer-urls", f"http://127.0.0.1:{pport}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
        "--initial-cluster", f"default=http://127.0.0.1:{pport}"])
    member = await start_member(config_from_args(ns))
    s = member.server
    await s.wait_leader()
    value = os.urandom(val_size)
    done = 0
    stop_at = 0.0

    async def client(i: int) -> None:
        nonlocal done
        n = i
        while time.monotonic() < stop_at:
            key = b"bench/%08d" % (n % key_space)
            await s.propose(InternalRaftRequest(put=rpc.PutRequest(key=key, value=value)))
            n += clients
            done += 1

    # one second of warm-up, then the measured run
    for phase in ("warmup", "measure"):
        stop_at = time.monotonic() + (1.0 if phase == "warmup" else duration)
        done = 0
        t0, c0 = time.monotonic(), time.process_time()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
    await member.stop()
    shutil.rmtree(data, ignore_errors=True)
    return {"ops": done, "ops_per_s": done / wall, "cpu_us_per_op": 1e6 * cpu / max(done, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=128)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--val-size", type=int, default=256)
    ap.add_argument("--key-space", type=int, default=10_000)
    a = ap.parse_args()
    r = asyncio.run(run(a.clients, a.duration, a.val_size, a.key_space))
    print(f"core only (no gRPC): {r['ops_per_s']:,.0f} writes/s, "
          f"{r['cpu_us_per_op']:.0f} us CPU per write (all threads), {a.clients} writers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
