"""The load generator: closed-loop workloads over grpc.aio, optionally in several processes.

Only the public etcd v3 API is used (KV.Put/Range/Txn, Watch.Watch), so the same run can be
pointed at real etcd or at datastore.

Cost model (measured on a 2-core box against etcd 3.4): grpc.aio with many tasks over a few
channels costs ~60-85 us of client CPU per unary RPC, the sync API with futures ~80-100 us and
blocking calls from threads ~130-180 us, so aio is used. Requests for put/get are encoded by
hand into bytes and responses are not decoded (raw bytes in and out of gRPC), which keeps the
per-request Python work to a few microseconds on top of gRPC's own cost. ``procs > 1`` runs the
clients in several processes (spawned, each with its own event loop and channels) so the
generator is not limited to one core; their histograms are merged at the end.

This module runs a benchmark (``run_bench``): pre-population, then the load in this process
or in spawned ones, then the merged summary. The parts live beside it:

- ``config.py``: ``BenchConfig`` and the workload names.
- ``wire.py``: keys and hand-encoded requests.
- ``worker.py``: ``Worker``, one process's clients, channels and counters, and pre-population;
  its workloads are in ``unary.py`` (put/get/txn) and ``watch.py``.
- ``report.py``: progress output, merging results, the printed summary.
- ``hist.py``: the latency histogram.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

from datastore.bench.config import WORKLOADS, BenchConfig, normalize_endpoint
from datastore.bench.report import Progress, format_summary, merge_results
from datastore.bench.stats import Stats
from datastore.bench.wire import KeyGen, prefix_end
from datastore.bench.worker import Worker, prepopulate

__all__ = [
    "WORKLOADS",
    "BenchConfig",
    "KeyGen",
    "format_summary",
    "merge_results",
    "normalize_endpoint",
    "prefix_end",
    "run_bench",
]


async def _run_inprocess(cfg: BenchConfig, prog: Progress) -> list[dict[str, Any]]:
    w = Worker(cfg, 0)
    await w.connect()
    try:
        streams = await w.open_watchers() if cfg.workload == "watch" else None
        if cfg.workload == "txn":
            await w.prime_revisions()
        prog.t0 = prog.last_line = time.monotonic()

        async def progress_loop() -> None:
            while True:
                await asyncio.sleep(prog.interval)
                prog.update(w.stats.ops, w.stats.errors)

        pt = asyncio.create_task(progress_loop())
        try:
            res = await w.run(time.monotonic(), None, streams)
        finally:
            pt.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pt
        prog.update(w.stats.ops, w.stats.errors)
        return [res]
    finally:
        await w.close()


def _proc_main(cfg: BenchConfig, index: int, shared: Any, start_at: Any, go: Any,
               q: Any) -> None:
    """Entry point of a spawned load process."""

    async def main() -> None:
        w = Worker(cfg, index)
        try:
            await w.connect()
            streams = await w.open_watchers() if cfg.workload == "watch" else None
            if cfg.workload == "txn":
                await w.prime_revisions()
        except Exception as e:
            q.put(("error", index, f"{type(e).__name__}: {e}"))
            await w.close()
            return
        q.put(("ready", index, None))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, go.wait)

        def publish(st: Stats) -> None:
            shared[2 * index] = st.ops
            shared[2 * index + 1] = st.errors

        try:
            res = await w.run(start_at.value, publish, streams)
            q.put(("result", index, res))
        except Exception as e:
            q.put(("error", index, f"{type(e).__name__}: {e}"))
        finally:
            await w.close()

    asyncio.run(main())


def _run_multiprocess(cfg: BenchConfig, prog: Progress) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    n = cfg.procs
    shared = ctx.Array("q", 2 * n, lock=False)
    start_at = ctx.Value("d", 0.0, lock=False)
    go = ctx.Event()
    q = ctx.Queue()
    procs = [ctx.Process(target=_proc_main, args=(cfg, i, shared, start_at, go, q), daemon=True)
             for i in range(n)]
    for p in procs:
        p.start()
    try:
        ready = 0
        while ready < n:
            kind, idx, payload = q.get(timeout=60)
            if kind == "error":
                raise RuntimeError(f"load process {idx} failed: {payload}")
            ready += 1
        start_at.value = time.monotonic() + 0.05
        prog.t0 = prog.last_line = start_at.value
        go.set()
        results: list[dict[str, Any]] = []
        while len(results) < n:
            try:
                kind, idx, payload = q.get(timeout=prog.interval)
            except Exception:  # queue.Empty
                if not any(p.is_alive() for p in procs) and q.empty():
                    raise RuntimeError("load processes exited without results") from None
                prog.update(sum(shared[0::2]), sum(shared[1::2]))
                continue
            if kind == "error":
                raise RuntimeError(f"load process {idx} failed: {payload}")
            results.append(payload)
        prog.update(sum(shared[0::2]), sum(shared[1::2]))
        return results
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()


def run_bench(cfg: BenchConfig, progress_stream: Any = None,
              on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one benchmark and return the summary dict.

    on_phase, if given, is called with "load-start" after pre-population (before connecting
    the load clients) and with "load-end" when they are done; bench_compare uses it to
    measure server CPU over the load only.
    """
    cfg.endpoints = [normalize_endpoint(e) for e in cfg.endpoints if e.strip()]
    if not cfg.endpoints:
        raise ValueError("no endpoints")
    if cfg.workload not in WORKLOADS:
        raise ValueError(f"unknown workload {cfg.workload!r}")
    if cfg.total is None and not cfg.duration:
        raise ValueError("need --duration or --total")
    cfg.procs = max(1, min(cfg.procs, cfg.clients if cfg.workload != "watch" else cfg.procs))
    prog = Progress(cfg, progress_stream)
    populated = 0
    if cfg.prepopulate and cfg.workload in ("get", "get-serializable"):
        if prog.mode not in ("none", "off"):
            print(f"[bench] writing {cfg.key_space} keys before reading them",
                  file=prog.out, flush=True)
        populated = asyncio.run(prepopulate(cfg))
    if on_phase is not None:
        on_phase("load-start")
    try:
        multi = cfg.procs > 1
        results = _run_multiprocess(cfg, prog) if multi else asyncio.run(_run_inprocess(cfg, prog))
    finally:
        prog.done()
        if on_phase is not None:
            on_phase("load-end")
    summary = merge_results(cfg, results)
    summary["prepopulated_keys"] = populated
    summary["warmup_s"] = cfg.warmup
    return summary
