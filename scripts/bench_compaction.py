#!/usr/bin/env python
"""Put latency before vs during a large compaction: real etcd vs datastore, one at a time.

For each target a fresh single member is started; ``--keys`` keys are each written
``--rewrites`` times (keys x rewrites revisions on disk; ``--batch`` > 1 writes them as
txns of that many puts, 1 = plain puts), then a steady open-loop put load (``--rate``
puts/s over ``--clients`` connections) runs for ``--before`` seconds, after which the
store is compacted to the latest revision with ``physical=true`` (both etcd and the
datastore answer once the old revisions are deleted) while the load goes on. Reports
put p50/p99/max before and during, the compaction's duration and server CPU, and the
ratio during/before per target, plus datastore/etcd.

    python scripts/bench_compaction.py                                   # 1M revisions
    python scripts/bench_compaction.py --keys 2000 --rewrites 100 --out bench.md
    python scripts/bench_compaction.py --targets etcd,datastore,baseline \
        --baseline-python ../main/.venv/bin/python     # + another checkout's datastore
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compare import proc_cpu_seconds

QUOTA = ["--quota-backend-bytes", str(8 << 30)]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


async def load(endpoint: str, keys: int, rewrites: int, batch: int, conc: int,
               label: str) -> int:
    """keys x rewrites revisions; returns the last revision."""
    chans = [grpc.aio.insecure_channel(endpoint) for _ in range(4)]
    stubs = [rpc_pb2_grpc.KVStub(c) for c in chans]
    value = b"v" * 64
    total = keys * rewrites
    # one round = every key once; a unit of work = ``batch`` consecutive keys of a round
    units = [(r, k) for r in range(rewrites) for k in range(0, keys, batch)]
    done = 0
    last = 0
    t0 = time.monotonic()
    next_report = t0 + 5
    it = iter(units)

    async def worker(i: int) -> None:
        nonlocal done, last, next_report
        stub = stubs[i % len(stubs)]
        for _, k in it:
            names = [b"key/%07d" % j for j in range(k, min(k + batch, keys))]
            if batch == 1:
                resp = await stub.Put(pb.PutRequest(key=names[0], value=value), timeout=60)
                rev = resp.header.revision
            else:
                ops = [pb.RequestOp(request_put=pb.PutRequest(key=n, value=value)) for n in names]
                rev = (await stub.Txn(pb.TxnRequest(success=ops), timeout=60)).header.revision
            last = max(last, rev)
            done += len(names)
            now = time.monotonic()
            if now >= next_report:
                next_report = now + 5
                print(f"[{label}] loaded {done}/{total} revisions "
                      f"({done / (now - t0):.0f}/s)", file=sys.stderr)

    await asyncio.gather(*(worker(i) for i in range(conc)))
    print(f"[{label}] loaded {total} revisions in {time.monotonic() - t0:.1f} s",
          file=sys.stderr)
    for c in chans:
        await c.close()
    return last


async def steady(endpoint: str, rate: float, clients: int, stop: asyncio.Event,
                 out: list[tuple[float, float]]) -> None:
    """Open loop: a put every 1/rate s (spread over ``clients`` channels), whatever the
    latency; records (send time, latency) of each acknowledged put."""
    chans = [grpc.aio.insecure_channel(endpoint) for _ in range(clients)]
    stubs = [rpc_pb2_grpc.KVStub(c) for c in chans]
    inflight: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        t = time.monotonic()
        await stubs[i % clients].Put(pb.PutRequest(key=b"steady/%04d" % (i % 1000),
                                                   value=b"x" * 64), timeout=60)
        out.append((t, time.monotonic() - t))

    i = 0
    start = time.monotonic()
    while not stop.is_set():
        task = asyncio.get_running_loop().create_task(one(i))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        i += 1
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))  # the schedule
    await asyncio.gather(*inflight, return_exceptions=True)
    for c in chans:
        await c.close()


async def settle(p: ServerProc, label: str, idle: float = 0.1, limit_s: float = 120.0) -> None:
    """Wait until the server is idle after loading (its storage engine flushes and
    compacts for a while), so the "before" window measures the steady state."""
    if p.popen is None:
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        c0 = proc_cpu_seconds(p.popen.pid)
        await asyncio.sleep(1.0)  # the sampling interval of the CPU-use condition
        if proc_cpu_seconds(p.popen.pid) - c0 < idle:
            break
    print(f"[{label}] idle after {time.monotonic() - t0:.1f} s", file=sys.stderr)


async def measure(p: ServerProc, args: argparse.Namespace, label: str) -> dict[str, Any]:
    last = await load(p.endpoint, args.keys, args.rewrites, args.batch, args.load_conc, label)
    await settle(p, label)
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    load_task = asyncio.get_running_loop().create_task(
        steady(p.endpoint, args.rate, args.clients, stop, samples))
    await asyncio.sleep(args.before)  # the "before" window of the steady load
    async with grpc.aio.insecure_channel(p.endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        cpu0 = proc_cpu_seconds(p.popen.pid) if p.popen else 0.0
        t0 = time.monotonic()
        print(f"[{label}] compacting to {last} ...", file=sys.stderr)
        await kv.Compact(pb.CompactionRequest(revision=last, physical=True), timeout=3600)
        t1 = time.monotonic()
        cpu1 = proc_cpu_seconds(p.popen.pid) if p.popen else 0.0
    stop.set()
    await load_task
    before = [lat for t, lat in samples if t + lat < t0]
    during = [lat for t, lat in samples if t0 <= t <= t1]  # sent while it ran
    res = {
        "revisions": args.keys * args.rewrites, "compact_s": t1 - t0,
        "compact_cpu_s": cpu1 - cpu0,
        "before_n": len(before), "before_p50_ms": pct(before, 0.5) * 1e3,
        "before_p99_ms": pct(before, 0.99) * 1e3, "before_max_ms": max(before) * 1e3,
        "during_n": len(during), "during_p50_ms": pct(during, 0.5) * 1e3,
        "during_p99_ms": pct(during, 0.99) * 1e3,
        "during_max_ms": max(during, default=float("nan")) * 1e3,
    }
    res["p99_ratio"] = res["during_p99_ms"] / res["before_p99_ms"]
    print(f"[{label}] {json.dumps({k: round(v, 2) for k, v in res.items()})}", file=sys.stderr)
    return res


def run_target(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=f"bench-compaction-{kind}-"))
    launcher = etcd_proc if kind == "etcd" else datastore_proc
    p = launcher(base, extra=QUOTA)
    if kind == "baseline":
        # another checkout's datastore: its interpreter, without the current directory
        # on sys.path (-P), so it imports its own installed package
        p.argv = [args.baseline_python, "-P", *p.argv[1:]]
    try:
        p.start(timeout=60)
        return asyncio.run(measure(p, args, kind))
    finally:
        p.stop()
        shutil.rmtree(base, ignore_errors=True)


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        ("put p50 before (ms)", "before_p50_ms"), ("put p99 before (ms)", "before_p99_ms"),
        ("put p50 during (ms)", "during_p50_ms"), ("put p99 during (ms)", "during_p99_ms"),
        ("put max during (ms)", "during_max_ms"),
        ("p99 during / before", "p99_ratio"), ("puts measured before / during", None),
        ("compaction took (s)", "compact_s"), ("server CPU during compaction (s)",
                                                "compact_cpu_s"),
    ]
    kinds = list(results)
    lines = [f"{args.keys} keys x {args.rewrites} rewrites = {args.keys * args.rewrites} "
             f"revisions ({'plain puts' if args.batch == 1 else f'txns of {args.batch} puts'}); "
             f"steady load {args.rate:.0f} puts/s over {args.clients} connections",
             "", "| | " + " | ".join(kinds) + " | datastore / etcd |",
             "|---|" + "---|" * (len(kinds) + 1)]
    for name, key in rows:
        if key is None:
            cells = [f"{r['before_n']} / {r['during_n']}" for r in results.values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " | |")
            continue
        cells = [f"{r[key]:.2f}" for r in results.values()]
        ratio = ""
        if "etcd" in results and "datastore" in results and results["etcd"][key]:
            ratio = f"{results['datastore'][key] / results['etcd'][key]:.2f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="etcd,datastore",
                    help="etcd, datastore, baseline (the datastore of --baseline-python)")
    ap.add_argument("--baseline-python", default="/work/main/.venv/bin/python",
                    help="interpreter whose installed datastore is the 'baseline' target")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--rewrites", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100,
                    help="puts per txn while loading (1 = plain puts; etcd allows 128)")
    ap.add_argument("--load-conc", type=int, default=32, help="concurrent loading requests")
    ap.add_argument("--rate", type=float, default=200.0, help="steady puts per second")
    ap.add_argument("--clients", type=int, default=4, help="connections of the steady load")
    ap.add_argument("--before", type=float, default=10.0, help="seconds measured before")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    results = {k: run_target(k, args) for k in args.targets.split(",")}
    md = table(results, args)
    print(md)
    if args.out:
        Path(args.out).write_text(md + "\n")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
