#!/usr/bin/env python
"""Where a datastore member's memory goes after loading N keys (in process, tracemalloc).

Runs one member in this process (its event loop in a thread), loads N keys of 1 KiB under
``/registry/pods/`` with ``datastore.bench``'s pre-population, then prints:

- the Python heap by source file and by line (tracemalloc: live objects only);
- RocksDB's own estimates of its memory (memtables, table readers, block cache pins),
  which tracemalloc cannot see;
- the in-memory raft log (entries kept until the next log compaction);
- VmRSS / RssAnon of this process.

tracemalloc slows the server several times over, so use fewer keys than bench_memory.py
(the numbers scale per key).

    python scripts/profile_memory.py --keys 50000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datastore.bench import BenchConfig
from datastore.bench.worker import prepopulate
from datastore.testing.procs import free_port

PREFIX = "/registry/pods/"
ROCKS_PROPS = ("rocksdb.cur-size-all-mem-tables", "rocksdb.size-all-mem-tables",
               "rocksdb.estimate-table-readers-mem", "rocksdb.block-cache-usage",
               "rocksdb.block-cache-pinned-usage")


def status_kib() -> dict[str, int]:
    out = {}
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                out[name] = int(rest.split()[0])
    return out


class Member:
    """One member on an event loop in a daemon thread; keeps the RunningMember."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.member = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),),
                                       daemon=True)

    async def _run(self) -> None:
        from datastore.member import start_member
        from datastore.server.config import add_serve_arguments, config_from_args

        p = argparse.ArgumentParser()
        add_serve_arguments(p)
        self.member = await start_member(config_from_args(p.parse_args(self.argv)))
        self.stop_ev = asyncio.Event()
        self.ready.set()
        await self.stop_ev.wait()
        await self.member.stop()

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(60):
            raise TimeoutError("member did not start")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(30)


def rocks_report(name: str, backend: object) -> list[str]:
    lines = []
    for cf_name, h in backend._cf.items():  # type: ignore[attr-defined]
        vals = {p.split(".", 1)[1]: h.property_int_value(p) for p in ROCKS_PROPS}
        lines.append(f"  {name}/{cf_name}: " + ", ".join(
            f"{k}={(v or 0) / 2**20:.1f}MiB" for k, v in vals.items()))
    return lines


def print_trace(snap: tracemalloc.Snapshot, keys: int, top: int) -> None:
    traced = sum(s.size for s in snap.statistics("filename"))
    print(f"traced Python heap: {traced / 2**20:.1f} MiB ({traced / keys:.0f} B per key)\n")
    print("by file:")
    for s in snap.statistics("filename")[:top]:
        print(f"  {s.size / 2**20:8.1f} MiB {s.count:9d} blocks  {s.traceback[0].filename}")
    print("\nby line:")
    for s in snap.statistics("lineno")[:top]:
        f = s.traceback[0]
        print(f"  {s.size / 2**20:8.1f} MiB {s.count:9d} blocks  {f.filename}:{f.lineno}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--val-size", type=int, default=1024)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--frames", type=int, default=1, help="traceback depth kept by tracemalloc")
    ap.add_argument("--no-trace", dest="trace", action="store_false",
                    help="skip tracemalloc (full speed): RocksDB, raft log and RSS only")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="profile-mem-"))
    port, peer = free_port(), free_port()
    argv = ["--data-dir", str(base / "m"), "--name", "m",
            "--listen-client-urls", f"http://127.0.0.1:{port}",
            "--advertise-client-urls", f"http://127.0.0.1:{port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"m=http://127.0.0.1:{peer}",
            "--quota-backend-bytes", str(8 << 30), "--log-level", "warn"]
    m = Member(argv)
    try:
        m.start()
        before = status_kib()
        if args.trace:
            tracemalloc.start(args.frames)
        cfg = BenchConfig(endpoints=[f"127.0.0.1:{port}"], workload="get", clients=64,
                          key_size=len(PREFIX) + len(str(args.keys - 1)), key_space=args.keys,
                          val_size=args.val_size, prefix=PREFIX, duration=1.0, progress="none",
                          timeout=60.0)
        asyncio.run(prepopulate(cfg))
        after = status_kib()
        srv = m.member.server  # type: ignore[attr-defined]
        print(f"{args.keys} keys of {args.val_size} B; process before {before}, after {after} (KiB)")
        if args.trace:
            print_trace(tracemalloc.take_snapshot(), args.keys, args.top)
        print("\nRocksDB (not in tracemalloc):")
        for line in rocks_report("state", srv.backend) + rocks_report("wal", srv.wal):
            print(line)
        ents = srv.storage._ents
        print(f"\nraft log in memory: {len(ents)} entries, "
              f"{sum(len(e.data) for e in ents) / 2**20:.1f} MiB of entry data")
        print(f"index: {len(srv.kv.index)} keys")
    finally:
        tracemalloc.stop()
        m.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
