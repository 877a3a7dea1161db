"""``datastore bench``: an etcd v3 load generator (works against datastore and real etcd).

Usage (also ``python -m datastore.bench``)::

    datastore bench --endpoints 127.0.0.1:2379 --workload put --clients 128 --duration 10
    datastore bench --workload get --clients 16 --total 100000 --json
    datastore bench --workload watch --watchers 64 --rate 500 --duration 10
"""

from __future__ import annotations

import argparse
import json
import sys

from datastore.bench.core import WORKLOADS, BenchConfig, format_summary, run_bench
from datastore.bench.hist import Histogram
from datastore.bench.report import summary_line

__all__ = [
    "WORKLOADS", "BenchConfig", "Histogram", "add_arguments", "config_from_args",
    "format_summary", "run", "run_bench",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench options to a (sub)parser."""
    p = parser
    p.add_argument("--endpoints", default="127.0.0.1:2379",
                   help="comma-separated host:port list (default %(default)s)")
    p.add_argument("--workload", choices=WORKLOADS, default="put",
                   help="put | get (linearizable) | get-serializable | txn (CAS) | watch")
    p.add_argument("--clients", type=int, default=16,
                   help="concurrent in-flight requests (watch: max in-flight writer puts)")
    p.add_argument("--conns", type=int, default=0,
                   help="gRPC channels (TCP connections) in total; default min(clients, 8)")
    p.add_argument("--procs", type=int, default=1,
                   help="client processes (clients and conns are split among them) so the "
                        "load generator can use more than one core")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=float, default=None,
                   help="seconds to run (default 10 unless --total)")
    g.add_argument("--total", type=int, default=None,
                   help="number of requests (watch: number of writes)")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="seconds of unmeasured load before measuring (not for watch)")
    p.add_argument("--key-size", type=int, default=32, help="key bytes (default %(default)s)")
    p.add_argument("--val-size", type=int, default=256, help="value bytes (default %(default)s)")
    p.add_argument("--key-space", type=int, default=10000,
                   help="number of distinct keys (default %(default)s)")
    p.add_argument("--prefix", default="bench/", help="key prefix (default %(default)s)")
    p.add_argument("--no-prepopulate", dest="prepopulate", action="store_false",
                   help="get workloads: do not write the key space first")
    p.add_argument("--watchers", type=int, default=16,
                   help="watch: number of watch streams, one watch on the prefix each")
    p.add_argument("--rate", type=float, default=100.0,
                   help="watch: writer puts per second (default %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    p.add_argument("--seed", type=int, default=None, help="random seed for key choice")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--progress", choices=("auto", "tty", "lines", "none"), default="auto",
                   help="progress on stderr: a bar if stderr is a tty, else periodic lines")
    p.add_argument("--progress-interval", type=float, default=5.0,
                   help="seconds between progress lines when stderr is not a tty")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    duration = args.duration
    if duration is None and args.total is None:
        duration = 10.0
    return BenchConfig(
        endpoints=[e for e in args.endpoints.split(",") if e.strip()],
        workload=args.workload, clients=max(1, args.clients), conns=max(0, args.conns),
        procs=max(1, args.procs), duration=duration, total=args.total,
        key_size=args.key_size, val_size=args.val_size, key_space=max(1, args.key_space),
        prefix=args.prefix, warmup=max(0.0, args.warmup), prepopulate=args.prepopulate,
        watchers=max(1, args.watchers), rate=args.rate, timeout=args.timeout, seed=args.seed,
        progress="none" if args.quiet else args.progress,
        progress_interval=args.progress_interval,
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed args; returns the exit code."""
    try:
        cfg = config_from_args(args)
        summary = run_bench(cfg)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"bench failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True), flush=True)
    else:
        print(format_summary(summary), flush=True)
    if cfg.progress != "none":
        print(summary_line(summary), file=sys.stderr, flush=True)
    return 0 if summary["ops"] > 0 else 1
