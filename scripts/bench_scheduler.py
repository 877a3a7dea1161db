#!/usr/bin/env python
"""Pods scheduled per second by kvscheduler with datastore vs real etcd as the store.

The scheduler speaks only the etcd API, so the same flow runs on both. For each store, one
at a time (so they never compete for CPU), and for each round: a fresh store (1 member, or
``--cluster 3``), 20 nodes, one ``kvscheduler run`` process that is elected and synced, then
N pods created in Txn batches of 100 as fast as the store takes them, while a watch counts
pods bound. Throughput is N / (first create -> last bind seen). Prints a markdown table with
the median over rounds and the ratio datastore/etcd.

    python scripts/bench_scheduler.py                    # 1000 pods, 3 rounds, single member
    python scripts/bench_scheduler.py --pods 500 --rounds 1 --cluster 3 --out bench-sched.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from datastore.client import SyncClient  # noqa: E402
from datastore.client.txn import op_put  # noqa: E402
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc, free_port  # noqa: E402
from kvscheduler import objects as obj  # noqa: E402
from kvscheduler.kvctl import prepare_for_create  # noqa: E402

FAST = ["--heartbeat-interval", "50", "--election-timeout", "500"]


def proc_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return 0.0
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_store(kind: str, base: Path, members: int) -> list[ServerProc]:
    launcher = etcd_proc if kind == "etcd" else datastore_proc
    ports = [(free_port(), free_port()) for _ in range(members)]
    spec = ",".join(f"m{i}=http://127.0.0.1:{pp}" for i, (_, pp) in enumerate(ports))
    extra = [*FAST, "--log-level", "error"] if kind == "datastore" else FAST
    procs = [launcher(base, f"m{i}", extra=list(extra), client_port=cp, peer_port=pp, initial_cluster=spec)
             for i, (cp, pp) in enumerate(ports)]
    for p in procs:
        p.launch()
    for p in procs:
        p.wait_ready(60)
    return procs


def wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)  # poll interval of the condition above


def one_round(kind: str, n_pods: int, members: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-sched-{kind}-") as tmp:
        base = Path(tmp)
        procs = start_store(kind, base, members)
        eps = [p.endpoint for p in procs]
        sched: subprocess.Popen[bytes] | None = None
        try:
            with SyncClient(eps, timeout=30.0) as c:
                nodes = [obj.make_node(f"node-{i:02d}", "64", "256Gi", pods="500") for i in range(20)]
                c.txn(success=[op_put(obj.key_of(n), obj.encode(prepare_for_create(n))) for n in nodes])
                log = base / "scheduler.log"
                with open(log, "wb") as f:
                    sched = subprocess.Popen(
                        [sys.executable, "-m", "kvscheduler", "run", "--endpoints", ",".join(eps),
                         "--identity", "bench", "--log-level", "info"], stdout=f, stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'operator'}"})
                wait(lambda: " elected " in log.read_text(errors="replace"), 60, "scheduler elected")
                pods = [obj.make_pod(f"p-{i}", "100m", "128Mi") for i in range(n_pods)]
                start_rev = c.get(obj.POD_PREFIX, prefix=True, count_only=True).header.revision + 1
                w = c.watch(obj.POD_PREFIX, prefix=True, start_revision=start_rev)
                bound: set[bytes] = set()
                done = threading.Event()
                t_end = [0.0]

                def count() -> None:
                    for batch in w:
                        for ev in batch.events:
                            if ev.type == ev.PUT and b'"nodeName"' in ev.kv.value:
                                bound.add(ev.kv.key)
                        if len(bound) >= n_pods:
                            t_end[0] = time.monotonic()
                            done.set()
                            return
                th = threading.Thread(target=count, daemon=True)
                th.start()
                cpu0 = proc_cpu_seconds(sched.pid)
                t0 = time.monotonic()
                for i in range(0, n_pods, 100):
                    c.txn(success=[op_put(obj.key_of(p), obj.encode(prepare_for_create(p)))
                                   for p in pods[i:i + 100]])
                t_created = time.monotonic()
                if not done.wait(600):
                    raise TimeoutError(f"only {len(bound)}/{n_pods} pods bound on {kind}")
                cpu = proc_cpu_seconds(sched.pid) - cpu0
                w.cancel()
                elapsed = t_end[0] - t0
                return {"seconds": elapsed, "pods_per_s": n_pods / elapsed, "create_s": t_created - t0,
                        "sched_cpu_s": cpu}
        finally:
            if sched is not None:
                sched.terminate()
                sched.wait(15)
            for p in procs:
                p.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cluster", type=int, default=1, help="members per store (1 or 3)")
    ap.add_argument("--stores", default="etcd,datastore")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    a = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    for kind in a.stores.split(","):
        for r in range(a.rounds):
            res = one_round(kind, a.pods, a.cluster)
            print(f"{kind} round {r + 1}: {res['pods_per_s']:.0f} pods/s ({res['seconds']:.2f}s, "
                  f"scheduler cpu {res['sched_cpu_s']:.2f}s)", file=sys.stderr, flush=True)
            results.setdefault(kind, []).append(res)
    med = {k: statistics.median(x["pods_per_s"] for x in v) for k, v in results.items()}
    title = f"kvscheduler, {a.pods} pods over 20 nodes, {a.cluster} member(s), median of {a.rounds} round(s)"
    lines = [title, "", "| store | pods/s | seconds | scheduler CPU s |", "|---|---:|---:|---:|"]
    for k, v in results.items():
        secs = statistics.median(x["seconds"] for x in v)
        cpu = statistics.median(x["sched_cpu_s"] for x in v)
        lines.append(f"| {k} | {med[k]:.0f} | {secs:.2f} | {cpu:.2f} |")
    if "etcd" in med and "datastore" in med:
        lines += ["", f"ratio datastore/etcd: {med['datastore'] / med['etcd']:.2f}"]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
