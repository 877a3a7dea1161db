#!/usr/bin/env python
"""Replication cost: 3-member put load, CPU per entry on the leader and on each follower.

Starts a 3-member cluster of each target in turn (real etcd 3.4, datastore from this tree,
and optionally datastore from another source tree, ``before=PATH``), runs the same put load
against it (``datastore.bench``, clients spread over the three members as in
``bench_compare.py --cluster 3``), and reports ops/s, p99, and the CPU microseconds per
put of the leader, of the followers (mean) and of the whole cluster. Rounds interleave the
targets (A B C A B C ...) because the machine is shared: compare medians, and CPU per put
more than ops/s.

    python scripts/bench_replication.py --rounds 3 --targets etcd,datastore
    python scripts/bench_replication.py --targets datastore,before=/tmp/old-tree --rounds 4
    python scripts/bench_replication.py --targets datastore --py-spy /tmp/prof  # raw stacks
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.bench import BenchConfig, run_bench
from datastore.testing.procs import free_port
from scripts.bench_compare import Cluster, proc_cpu_seconds


def leader_index(cluster: Cluster) -> int:
    """Which member leads now (by its Status answer)."""
    for i, m in enumerate(cluster.members):
        with grpc.insecure_channel(m.endpoint) as ch:
            st = rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=5)
            if st.leader == st.header.member_id:
                return i
    return -1


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (comm) of a process, from /proc."""
    out: dict[str, float] = {}
    tck = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            st = (task / "stat").read_text()
        except OSError:
            continue
        name = st[st.index("(") + 1:st.rindex(")")]
        f = st[st.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / tck
    return out


def peer_counts(urls: list[str]) -> dict[str, float]:
    """Sum over members of datastore's per-peer stream counters."""
    out: dict[str, float] = {}
    for url in urls:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith("datastore_network_peer_"):
                name = line.split("{")[0].removeprefix("datastore_network_peer_")
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def run_one(target: str, args: argparse.Namespace, round_no: int) -> dict[str, Any]:
    kind, _, src = target.partition("=")
    kind = "datastore" if kind == "before" else kind
    base = Path(tempfile.mkdtemp(prefix=f"bench-repl-{kind}-"))
    cluster = Cluster(kind, 3, base, args.datastore_arg if kind == "datastore" else [])
    metrics: dict[str, str] = {}
    if kind == "datastore":
        for m in cluster.members:
            metrics[m.name] = f"http://127.0.0.1:{free_port()}"
            m.argv += ["--listen-metrics-urls", metrics[m.name]]
    if src:
        for m in cluster.members:
            # the other tree's datastore package wins (and not the current directory's)
            m.env.update(PYTHONPATH=src, PYTHONSAFEPATH="1")
    out: dict[str, Any] = {"target": target.split("=")[0], "round": round_no}
    try:
        cluster.start(args.start_timeout)
        eps = cluster.endpoints
        if args.leader_only:  # followers then do replication work only
            eps = [eps[leader_index(cluster)]]
        cfg = BenchConfig(endpoints=eps, workload="put", clients=args.clients,
                          duration=args.duration, warmup=args.warmup, val_size=args.val_size,
                          progress="none")
        marks: dict[str, tuple[float, list[float]]] = {}
        spies: list[subprocess.Popen[bytes]] = []
        threads: dict[str, list[dict[str, float]]] = {}

        def on_phase(phase: str) -> None:
            pids = [m.popen.pid for m in cluster.members if m.popen is not None]
            marks[phase] = (time.monotonic(), [proc_cpu_seconds(p) for p in pids])
            threads[phase] = [thread_cpu(p) for p in pids]
            if phase == "load-start" and args.py_spy and kind == "datastore":
                Path(args.py_spy).mkdir(parents=True, exist_ok=True)
                for m, p in zip(cluster.members, pids, strict=True):
                    spies.append(subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(p),
                         "-d", str(int(args.duration)), "-r", "200", "--format", "raw",
                         "--nonblocking", "--gil",
                         "-o", f"{args.py_spy}/{out['target']}-r{round_no}-{m.name}.txt"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        before = peer_counts(list(metrics.values()))
        s = run_bench(cfg, on_phase=on_phase)
        after = peer_counts(list(metrics.values()))
        total_ops = s["ops_per_s"] * (marks["load-end"][0] - marks["load-start"][0])
        out["per_put"] = {k: round((after[k] - before.get(k, 0)) / max(total_ops, 1), 3)
                          for k in after}
        for sp in spies:
            sp.wait()
        lead = leader_index(cluster)
        (t0, c0), (t1, c1) = marks["load-start"], marks["load-end"]
        ops = s["ops_per_s"] * (t1 - t0)  # warm-up included, as bench_compare counts CPU
        per = [(b - a) / max(ops, 1) * 1e6 for a, b in zip(c0, c1, strict=True)]
        fol = [u for i, u in enumerate(per) if i != lead]
        # µs per put by thread name: the leader's, and one follower's
        for role, i in (("leader", lead), ("follower", (lead + 1) % 3)):
            a, b = threads["load-start"][i], threads["load-end"][i]
            out[f"{role}_threads"] = {k: round((v - a.get(k, 0)) / max(ops, 1) * 1e6, 1)
                                      for k, v in sorted(b.items()) if v - a.get(k, 0) > 0}
        out.update(ops_per_s=s["ops_per_s"], p99_ms=s["latency_ms"]["p99"], errors=s["errors"],
                   leader=lead, leader_us=per[lead] if lead >= 0 else None,
                   follower_us=statistics.mean(fol) if fol else None, cluster_us=sum(per),
                   client_cpu_pct=s["client_cpu_pct"])
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
        print(cluster.log_tails(), file=sys.stderr)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out), file=sys.stderr)
    return out


def _med(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="etcd,datastore",
                   help="comma list: etcd, datastore, before=PATH (datastore from PATH)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clients", type=int, default=128)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--datastore-arg", action="append", default=[])
    p.add_argument("--leader-only", action="store_true",
                   help="clients talk to the leader only (followers' CPU is replication alone)")
    p.add_argument("--py-spy", help="record raw py-spy stacks of every datastore member here")
    p.add_argument("--json-out", type=Path)
    a = p.parse_args(argv)
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    rows = [run_one(t, a, r) for r in range(a.rounds) for t in targets]
    names = [t.split("=")[0] for t in targets]
    ref = next((n for n in names if n == "etcd"), None)
    ref_ops = _med([r for r in rows if r["target"] == ref], "ops_per_s") if ref else None
    print(f"3 members, put, {a.clients} clients, {a.duration:g} s x {a.rounds} rounds "
          "(medians; CPU µs per put, all threads)\n")
    print("| target | ops/s | p99 ms | leader µs/put | follower µs/put | cluster µs/put |"
          " ops/s / etcd |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        rs = [r for r in rows if r["target"] == n and "error" not in r]
        ops = _med(rs, "ops_per_s")
        ratio = f"{ops / ref_ops:.2f}" if ops and ref_ops else "-"
        cells = [_med(rs, k) for k in ("ops_per_s", "p99_ms", "leader_us", "follower_us",
                                       "cluster_us")]
        print(f"| {n} | " + " | ".join("-" if c is None else f"{c:,.0f}" if i != 1 else
                                       f"{c:.1f}" for i, c in enumerate(cells))
              + f" | {ratio} |")
    if a.json_out:
        a.json_out.write_text(json.dumps(rows, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
