#!/usr/bin/env python
"""What metrics cost the put path: the same put load against datastore with and without
``/metrics`` being scraped every second, in interleaved rounds.

Arms (each a fresh single-member cluster, one at a time so they never share the CPU):

- ``baseline``: the tree given by ``--baseline-tree`` (e.g. a checkout without the
  metrics work), run with ``PYTHONPATH`` pointing at it; not scraped;
- ``basic``: this tree, ``--metrics basic``, ``/metrics`` fetched every ``--scrape-interval``;
- ``extensive``: this tree, ``--metrics extensive`` (the gRPC handling-time histograms), scraped.

Prints a markdown table: median ops/s, p99 and server CPU µs per put over the rounds, and
each arm's ratio to the baseline; plus the server time a scrape takes (from the client).

    python scripts/bench_metrics.py --baseline-tree /work/main --rounds 3 --duration 10
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_compare import Cluster

from datastore.bench import BenchConfig, run_bench
from datastore.testing.procs import free_port


class Scraper(threading.Thread):
    """GET /metrics every ``interval`` seconds until stopped; records each fetch's time."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.stop = threading.Event()
        self.took: list[float] = []
        self.sizes: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(self.interval):  # the scrape period, as Prometheus' is
            t0 = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as r:
                self.sizes.append(len(r.read()))
            self.took.append(time.perf_counter() - t0)


def run_arm(arm: str, args: argparse.Namespace, clients: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=f"bench-metrics-{arm}-"))
    port = free_port()
    extra = [f"--listen-metrics-urls=http://127.0.0.1:{port}"]
    if arm != "baseline":
        extra.append(f"--metrics={arm}")
    cluster = Cluster("datastore", 1, base, extra)
    if arm == "baseline":
        for m in cluster.members:
            m.env["PYTHONPATH"] = str(args.baseline_tree)
    cluster.start(60)
    scraper = Scraper(f"http://127.0.0.1:{port}/metrics", args.scrape_interval)
    marks: dict[str, tuple[float, float]] = {}

    def on_phase(phase: str) -> None:
        marks[phase] = (time.monotonic(), cluster.cpu_seconds())
        if phase == "load-start" and arm != "baseline":
            scraper.start()

    try:
        s = run_bench(BenchConfig(endpoints=cluster.endpoints, workload="put", clients=clients,
                                  duration=args.duration, warmup=args.warmup, key_size=32,
                                  val_size=256, key_space=10000, progress="none"),
                      on_phase=on_phase)
    finally:
        scraper.stop.set()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    (t0, c0), (t1, c1) = marks["load-start"], marks["load-end"]
    cpu = (c1 - c0) / max(t1 - t0, 1e-9)
    return {"ops": s["ops_per_s"], "p99": s["latency_ms"]["p99"], "errors": s["errors"],
            "us_per_op": cpu / max(s["ops_per_s"], 1e-9) * 1e6,
            "scrapes": len(scraper.took),
            "scrape_ms": statistics.median(scraper.took) * 1000 if scraper.took else None,
            "scrape_kb": statistics.median(scraper.sizes) / 1024 if scraper.sizes else None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-tree", type=Path, required=True,
                   help="a datastore checkout to compare with (its datastore/ package is run)")
    p.add_argument("--arms", default="baseline,basic,extensive")
    p.add_argument("--clients", default="16,128")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--scrape-interval", type=float, default=1.0)
    args = p.parse_args(argv)
    arms = args.arms.split(",")
    res: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for clients in map(int, args.clients.split(",")):
            for arm in arms:  # interleaved, so a noisy minute hits every arm alike
                got = run_arm(arm, args, clients)
                res.setdefault((arm, clients), []).append(got)
                print(f"round {r} {arm} clients={clients}: {got['ops']:.0f} ops/s "
                      f"{got['us_per_op']:.0f} µs/op p99 {got['p99']:.1f} ms, "
                      f"{got['scrapes']} scrapes", file=sys.stderr)
    print("| clients | arm | ops/s (median) | p99 ms | server CPU µs/put | ops/s vs baseline "
          "| CPU/put vs baseline | scrape ms | scrape KiB | ops/s per round |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clients in map(int, args.clients.split(",")):
        ref = res.get(("baseline", clients))
        for arm in arms:
            rs = res[(arm, clients)]
            ops = statistics.median(x["ops"] for x in rs)
            us = statistics.median(x["us_per_op"] for x in rs)
            p99 = statistics.median(x["p99"] for x in rs)
            vs_ops = vs_us = "—"
            if ref and arm != "baseline":
                vs_ops = f"{ops / statistics.median(x['ops'] for x in ref) - 1:+.1%}"
                vs_us = f"{us / statistics.median(x['us_per_op'] for x in ref) - 1:+.1%}"
            sm = [x["scrape_ms"] for x in rs if x["scrape_ms"] is not None]
            kb = [x["scrape_kb"] for x in rs if x["scrape_kb"] is not None]
            print(f"| {clients} | {arm} | {ops:,.0f} | {p99:.1f} | {us:.0f} | {vs_ops} | {vs_us} | "
                  f"{statistics.median(sm):.1f} | {statistics.median(kb):.0f} | "
                  if sm else f"| {clients} | {arm} | {ops:,.0f} | {p99:.1f} | {us:.0f} | {vs_ops} | "
                  f"{vs_us} | — | — | ", end="")
            print(", ".join(f"{x['ops']:,.0f}" for x in rs) + " |")


if __name__ == "__main__":
    main()
