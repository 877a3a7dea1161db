#!/usr/bin/env python
"""Memory per key, side by side: real etcd 3.4 vs datastore, one member each, one at a time.

For each target a fresh single-member server is started in a temporary directory, N keys
of ``--val-size`` bytes (default 200,000 x 1 KiB) are put under ``/registry/pods/`` by
``datastore.bench``'s pre-population (one Put per request, 64 in flight), then the
server's memory is read from ``/proc/<pid>/status``: after the load, and again after one
full prefix Range (which makes both servers touch every value). The server is stopped
before the next one starts, so they never compete for memory or CPU.

VmRSS counts every resident page, including file pages mapped in (etcd's bbolt file is
mmapped, so the values it has read count there as RssFile); RssAnon is the heap (Python
objects, RocksDB block cache and memtables, Go heap). Both are reported.

    python scripts/bench_memory.py                      # 200k keys of 1 KiB
    python scripts/bench_memory.py --keys 20000 --target datastore
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.bench import BenchConfig
from datastore.bench.wire import prefix_end
from datastore.bench.worker import prepopulate
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc

PREFIX = "/registry/pods/"
LAUNCHERS = {"etcd": etcd_proc, "datastore": datastore_proc}
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
OPTS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def proc_status_kib(pid: int) -> dict[str, int]:
    """The memory fields of /proc/<pid>/status, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in STATUS_FIELDS:
                out[name] = int(rest.split()[0])
    return out


def full_range(endpoint: str, n: int, timeout: float) -> float:
    """One Range over the whole prefix; checks it returns n keys; seconds taken."""
    p = PREFIX.encode()
    with grpc.insecure_channel(endpoint, options=OPTS) as ch:
        t0 = time.perf_counter()
        r = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=p, range_end=prefix_end(p)),
                                          timeout=timeout)
        took = time.perf_counter() - t0
    if len(r.kvs) != n:
        raise RuntimeError(f"full range returned {len(r.kvs)} keys, expected {n}")
    return took


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=f"bench-mem-{kind}-"))
    extra = ["--quota-backend-bytes", str(8 << 30)]
    extra += args.etcd_arg if kind == "etcd" else args.datastore_arg
    proc: ServerProc = LAUNCHERS[kind](base, extra=extra)
    try:
        proc.start(args.start_timeout)
        assert proc.popen is not None
        pid = proc.popen.pid
        res: dict[str, Any] = {"idle": proc_status_kib(pid)}
        cfg = BenchConfig(endpoints=[proc.endpoint], workload="get", clients=args.clients,
                          key_size=len(PREFIX) + len(str(args.keys - 1)), key_space=args.keys,
                          val_size=args.val_size, prefix=PREFIX, timeout=args.timeout,
                          duration=1.0, progress="none")
        print(f"[{kind}] loading {args.keys} keys of {args.val_size} B ...", file=sys.stderr)
        t0 = time.perf_counter()
        asyncio.run(prepopulate(cfg))
        res["load_s"] = round(time.perf_counter() - t0, 1)
        res["after_load"] = proc_status_kib(pid)
        print(f"[{kind}] loaded in {res['load_s']} s: {res['after_load']}", file=sys.stderr)
        res["range_s"] = round(full_range(proc.endpoint, args.keys, args.timeout * 30), 2)
        res["after_range"] = proc_status_kib(pid)
        print(f"[{kind}] full range {res['range_s']} s: {res['after_range']}", file=sys.stderr)
        return res
    finally:
        proc.stop()
        if args.keep_dirs:
            print(f"[{kind}] data and logs kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.0f}"


def markdown(res: dict[str, dict[str, Any]], n: int) -> str:
    kinds = list(res)
    head = ["measure"] + [f"{k} MiB" for k in kinds]
    two = {"etcd", "datastore"} <= set(kinds)
    if two:
        head.append("datastore/etcd")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    per = 100_000 / n
    rows: list[tuple[str, dict[str, float]]] = []
    for phase in ("idle", "after_load", "after_range"):
        for field in ("VmRSS", "RssAnon"):
            rows.append((f"{field} {phase.replace('_', ' ')}",
                         {k: r[phase].get(field, 0) for k, r in res.items()}))
    for phase in ("after_load", "after_range"):
        rows.append((f"VmRSS per 100k keys {phase.replace('_', ' ')} (minus idle)",
                     {k: (r[phase]["VmRSS"] - r["idle"]["VmRSS"]) * per for k, r in res.items()}))
    rows.append(("VmHWM (peak)", {k: r["after_range"].get("VmHWM", 0) for k, r in res.items()}))
    for name, vals in rows:
        row = [name] + [_mib(vals[k]) for k in kinds]
        if two:
            row.append(f"{vals['datastore'] / vals['etcd']:.2f}" if vals["etcd"] else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--val-size", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=64, help="puts in flight while loading")
    ap.add_argument("--target", default="etcd,datastore", help="comma list of etcd|datastore")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    ap.add_argument("--start-timeout", type=float, default=60.0)
    ap.add_argument("--etcd-arg", action="append", default=[], help="extra etcd flag (repeat)")
    ap.add_argument("--datastore-arg", action="append", default=[],
                    help="extra datastore serve flag (repeat)")
    ap.add_argument("--json-out", type=Path, help="write the raw numbers (KiB) as JSON here")
    ap.add_argument("--keep-dirs", action="store_true", help="keep data dirs and server logs")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.target.split(",") if k.strip()]
    if not kinds or any(k not in LAUNCHERS for k in kinds):
        print(f"--target must be a comma list of {sorted(LAUNCHERS)}", file=sys.stderr)
        return 2
    res = {k: measure(k, args) for k in kinds}
    print(f"\n{args.keys} keys of {args.val_size} B under {PREFIX}, one member, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()}, Python "
          f"{platform.python_version()}; load time (s): "
          + ", ".join(f"{k} {r['load_s']}" for k, r in res.items()) + "\n")
    print(markdown(res, args.keys))
    if args.json_out:
        args.json_out.write_text(json.dumps(res, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
