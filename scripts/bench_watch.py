#!/usr/bin/env python
"""Watch fan-out, side by side: real etcd 3.4 vs datastore, one member each, same load.

For each scenario, each server in turn (one at a time, fresh data dir): client processes
open W watchers on one prefix (``--per-stream`` watchers multiplexed on each Watch
stream, as clientv3 does for watches sharing a context), then one writer puts at R
writes/s for D seconds. Reported per server:

- writes/s held (acknowledged puts / writer's elapsed time) against the rate asked;
- events delivered / expected (every watcher must get every write, once, in order);
- delivery latency p50/p99/max: the put's acknowledgement time to the event's receipt
  (clamped at 0: an event may arrive before the put's reply);
- the server process's CPU-seconds over the run.

Scenarios: ``a`` 1,000 watchers at 40 w/s; ``b`` 1,000 at 10 w/s; ``c`` 10,000 at 10 w/s;
``d`` 1,000 watchers that all start 5,000 revisions back (catch-up from history) while
writes go on at 10 w/s: also reported, when every watcher had the whole history.

The watch load comes from one Go process (``tools/refs/watchload``, built by
``python scripts/build_refs.py watchload``): Python client processes
(``--client python``) saturate before either server at these rates, and then it is their
queueing that the latencies measure.

    python scripts/bench_watch.py                       # a, b, c; 10 s each
    python scripts/bench_watch.py --scenarios a --duration 20
    python scripts/bench_watch.py --repeat 3 --servers etcd,datastore,before \\
        --before-src /path/to/a/checkout/of/main      # before/after, interleaved
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from datastore.api.etcdserverpb import rpc_pb2
from datastore.bench.wire import PUT, WATCH, prefix_end
from datastore.testing import refs
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc

PREFIX = b"/registry/bench/"
# watchers, writes/s, revisions of history the watchers start behind
SCENARIOS = {"a": (1000, 40.0, 0), "b": (1000, 10.0, 0), "c": (10000, 10.0, 0),
             "d": (1000, 10.0, 5000)}
OPTS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
STREAMS_PER_CHANNEL = 10


def log(msg: str, **kv: Any) -> None:
    fields = " ".join(f"{k}={v}" for k, v in kv.items())
    print(f"{time.strftime('%H:%M:%S')} bench_watch {msg} {fields}".rstrip(),
          file=sys.stderr, flush=True)


# ---- client processes: watchers ------------------------------------------------------------
async def _watch_proc(endpoint: str, n: int, per_stream: int, start_rev: int, history: int,
                      ready: Any, done: Any, stop: Any, expected: Any, out: Any) -> None:
    nstreams = (n + per_stream - 1) // per_stream
    channels = [grpc.aio.insecure_channel(endpoint, options=OPTS)
                for _ in range((nstreams + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL)]
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
        key=PREFIX, range_end=prefix_end(PREFIX), start_revision=start_rev))
    revs, times = array("q"), array("d")
    counts: list[int] = []  # per watcher: events received
    bad = [0]  # events out of order, duplicated, or for an unknown watch id
    responses = [0]  # event responses received (fewer than events when they carry several)
    last: list[int] = []
    live_from = start_rev + history  # latencies only for the writes made during the run
    mono = time.monotonic

    def handle(r: Any, ids: dict[int, int]) -> None:
        if not r.events:
            return
        responses[0] += 1
        now = mono()
        i = ids.get(r.watch_id)
        if i is None:
            bad[0] += len(r.events)
            return
        prev = last[i]
        for ev in r.events:
            rev = ev.kv.mod_revision
            if rev <= prev:
                bad[0] += 1
                continue
            prev = rev
            if rev >= live_from:
                revs.append(rev)
                times.append(now)
        counts[i] += len(r.events)
        last[i] = prev

    calls = []
    for s in range(nstreams):
        call = channels[s // STREAMS_PER_CHANNEL].stream_stream(
            WATCH, request_serializer=rpc_pb2.WatchRequest.SerializeToString,
            response_deserializer=rpc_pb2.WatchResponse.FromString)()
        k = min(per_stream, n - s * per_stream)
        for _ in range(k):
            await call.write(create)
        ids: dict[int, int] = {}
        while len(ids) < k:
            r = await call.read()
            if r is grpc.aio.EOF or r.canceled:
                raise RuntimeError(f"watch not created: {r}")
            if r.created:
                ids[r.watch_id] = len(counts)
                counts.append(0)
                last.append(0)
            else:  # a watcher from the past already catching up
                handle(r, ids)
        calls.append((call, ids))
    ready.release()

    async def reader(call: Any, ids: dict[int, int]) -> None:
        while True:
            r = await call.read()
            if r is grpc.aio.EOF:
                return
            handle(r, ids)

    tasks = [asyncio.create_task(reader(c, ids)) for c, ids in calls]
    loop = asyncio.get_running_loop()
    # stop when told, or once every watcher has the expected count
    history_done = 0.0  # when every watcher here had the whole history (scenario d)
    while not stop.is_set():
        if history and not history_done and all(c >= history for c in counts):
            history_done = time.monotonic()
        want = expected.value
        if want and all(c >= want for c in counts):
            done.release()
            break
        await asyncio.sleep(0.02)  # poll interval of the completion condition
    await loop.run_in_executor(None, stop.wait)
    for c, _ in calls:
        c.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.put({"counts": counts, "bad": bad[0], "responses": responses[0], "revs": revs.tobytes(),
             "times": times.tobytes(), "history_done": history_done})
    for ch in channels:
        await ch.close()


def watch_proc(endpoint: str, n: int, per_stream: int, start_rev: int, history: int, ready: Any,
               done: Any, stop: Any, expected: Any, out: Any) -> None:
    asyncio.run(_watch_proc(endpoint, n, per_stream, start_rev, history, ready, done, stop,
                            expected, out))


async def preload(endpoint: str, n: int) -> int:
    """n puts (one revision each) on the prefix; returns the first one's revision."""
    async with grpc.aio.insecure_channel(endpoint, options=OPTS) as ch:
        put = ch.unary_unary(PUT, request_serializer=rpc_pb2.PutRequest.SerializeToString,
                             response_deserializer=rpc_pb2.PutResponse.FromString)
        revs: list[int] = []
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                r = await put(rpc_pb2.PutRequest(key=PREFIX + b"k%05d" % (i % 1000),
                                                 value=b"h" * 256), timeout=60)
                revs.append(r.header.revision)

        await asyncio.gather(*(one(i) for i in range(n)))
        return min(revs)


# ---- the writer (this process) --------------------------------------------------------------
async def write_load(endpoint: str, rate: float, duration: float, failed: list[str]
                     ) -> tuple[dict[int, float], float]:
    """Puts at ``rate``/s on schedule for ``duration`` s; returns ack time per revision
    (failed puts go to ``failed``)."""
    acks: dict[int, float] = {}
    async with grpc.aio.insecure_channel(endpoint, options=OPTS) as ch:
        put = ch.unary_unary(PUT, request_serializer=rpc_pb2.PutRequest.SerializeToString,
                             response_deserializer=rpc_pb2.PutResponse.FromString)
        value = b"v" * 256
        n = int(rate * duration)
        t0 = time.monotonic()

        async def one(i: int) -> None:
            try:
                r = await put(rpc_pb2.PutRequest(key=PREFIX + b"k%05d" % (i % 1000),
                                                 value=value), timeout=30)
            except grpc.RpcError as e:
                failed.append(str(e.code()))  # type: ignore[attr-defined]
                return
            acks[r.header.revision] = time.monotonic()

        tasks = []
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return acks, time.monotonic() - t0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_one(proc: ServerProc, watchers: int, rate: float, history: int, duration: float,
            per_stream: int, nprocs: int, drain_s: float) -> dict[str, Any]:
    start_rev = asyncio.run(preload(proc.endpoint, history)) if history else 0
    ctx = mp.get_context("spawn")
    ready, done, stop = ctx.Semaphore(0), ctx.Semaphore(0), ctx.Event()
    expected = ctx.Value("q", 0)
    out = ctx.Queue()
    shares = [watchers // nprocs + (1 if i < watchers % nprocs else 0) for i in range(nprocs)]
    ps = [ctx.Process(target=watch_proc, args=(proc.endpoint, k, per_stream, start_rev, history,
                                               ready, done, stop, expected, out))
          for k in shares if k]
    for p in ps:
        p.start()
    for _ in ps:
        if not ready.acquire(timeout=300):
            raise RuntimeError("watchers were not created in time")
    t_ready = time.monotonic()
    log("watchers created", server=proc.kind, watchers=watchers)
    pid = proc.popen.pid  # type: ignore[union-attr]
    cpu0 = cpu_seconds(pid)
    failed: list[str] = []
    acks, elapsed = asyncio.run(write_load(proc.endpoint, rate, duration, failed))
    expected.value = history + len(acks)
    log("writes done", server=proc.kind, writes=len(acks), elapsed=round(elapsed, 2))
    # every watcher complete, or the drain deadline
    t_end = time.monotonic()
    deadline = t_end + drain_s
    complete = all(done.acquire(timeout=max(0.0, deadline - time.monotonic())) for _ in ps)
    complete_after = time.monotonic() - t_end
    stop.set()
    results = [out.get(timeout=120) for _ in ps]
    cpu = cpu_seconds(pid) - cpu0
    for p in ps:
        p.join(30)
    lat: list[float] = []
    got, bad, responses = 0, 0, 0
    counts: list[int] = []
    for r in results:
        counts += r["counts"]
        got += sum(r["counts"])
        bad += r["bad"]
        responses += r["responses"]
        rv, tm = array("q"), array("d")
        rv.frombytes(r["revs"])
        tm.frombytes(r["times"])
        for rev, t in zip(rv, tm, strict=True):
            a = acks.get(rev)
            if a is not None:
                lat.append(max(0.0, t - a))
    lat.sort()
    want = (history + len(acks)) * watchers
    hist_done = [r["history_done"] for r in results]
    return {
        "server": proc.kind, "watchers": watchers, "rate_asked": rate,
        "writes": len(acks), "write_errors": len(failed), "writes_per_s": round(len(acks) / elapsed, 2),
        "events_expected": want, "events_delivered": got, "bad_events": bad,
        "events_per_response": round(got / max(responses, 1), 2),
        "watchers_complete": sum(1 for c in counts if c >= history + len(acks)),
        "history": history,
        "history_caught_up_s": round(max(hist_done) - t_ready, 2) if history and all(hist_done)
        else None,
        "p50_ms": round(pct(lat, 0.50) * 1000, 2), "p99_ms": round(pct(lat, 0.99) * 1000, 2),
        "max_ms": round(lat[-1] * 1000, 2) if lat else float("nan"),
        "server_cpu_s": round(cpu, 2), "all_complete": complete,
        "complete_after_s": round(complete_after, 2),
    }


def run_one_go(proc: ServerProc, watchers: int, rate: float, history: int, duration: float,
               per_stream: int, drain_s: float) -> dict[str, Any]:
    """The same load from the Go watch client (tools/refs/watchload): watchers, writer
    and latencies in one Go process; the server's CPU is read around its load phase."""
    argv = [str(refs.binary("watchload")), "-endpoint", proc.endpoint, "-watchers", str(watchers),
            "-per-stream", str(per_stream), "-streams-per-conn", str(STREAMS_PER_CHANNEL),
            "-rate", str(rate), "-duration", f"{duration}s", "-history", str(history),
            "-drain", f"{drain_s}s"]
    pid = proc.popen.pid  # type: ignore[union-attr]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"watchload did not get its watchers created: {line!r}")
        log("watchers created", server=proc.kind, watchers=watchers, client="go")
        cpu0 = cpu_seconds(pid)
        out = p.stdout.readline()
        cpu = cpu_seconds(pid) - cpu0
        if p.wait(60) != 0 or not out:
            raise RuntimeError(f"watchload exited {p.returncode}")
    row = json.loads(out)
    row.update(server=proc.kind, watchers=watchers, rate_asked=rate, history=history,
               server_cpu_s=round(cpu, 2))
    return row


def start_server(kind: str, base: Path, before_src: str | None) -> ServerProc:
    if kind == "etcd":
        p = etcd_proc(base, extra=["--quota-backend-bytes", str(8 << 30)])
    else:
        p = datastore_proc(base)
        if kind == "before":
            if not before_src:
                raise SystemExit("--servers before needs --before-src")
            p.env["PYTHONPATH"] = before_src
            p.kind = "before"
    return p.start(timeout=60)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario and server: medians of the rates and latencies, sums of the counts."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["scenario"], r["server"]), []).append(r)
    med = []
    for (sc, kind), rs in out.items():
        m = {"scenario": sc, "server": kind, "runs": len(rs), "watchers": rs[0]["watchers"],
             "rate_asked": rs[0]["rate_asked"]}
        for k in ("writes_per_s", "p50_ms", "p99_ms", "max_ms", "server_cpu_s",
                  "events_per_response"):
            m[k] = statistics.median(r[k] for r in rs)
        for k in ("events_delivered", "events_expected", "bad_events", "write_errors"):
            m[k] = sum(r[k] for r in rs)
        caught = [r["history_caught_up_s"] for r in rs]
        m["history_caught_up_s"] = (round(statistics.median(caught), 2)  # type: ignore[arg-type]
                                    if all(c is not None for c in caught) else None)
        med.append(m)
    return med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="abc", help="any of a, b, c (default %(default)s)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of writes per run")
    ap.add_argument("--per-stream", type=int, default=100, help="watchers per Watch stream")
    ap.add_argument("--procs", type=int, default=2, help="watcher client processes")
    ap.add_argument("--drain", type=float, default=30.0,
                    help="seconds after the last write to wait for every event")
    ap.add_argument("--servers", default="etcd,datastore",
                    help="comma-separated: etcd, datastore (this tree), before (--before-src)")
    ap.add_argument("--before-src", default=None,
                    help="source tree of the 'before' datastore (run with it on PYTHONPATH)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per scenario and server")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--client", choices=("go", "python"), default="go",
                    help="the watch load: Go (tools/refs/watchload, built by "
                         "scripts/build_refs.py watchload; default) or Python client processes")
    args = ap.parse_args()
    if args.client == "go":
        try:
            refs.binary("watchload")
        except refs.RefError as e:
            raise SystemExit(f"{e}\n(or run with --client python)") from None
    rows = []
    kinds = args.servers.split(",")
    for rep in range(args.repeat):  # interleaved, so load changes hit every server alike
        for sc in args.scenarios:
            watchers, rate, history = SCENARIOS[sc]
            for kind in kinds:
                with tempfile.TemporaryDirectory(prefix="bench_watch_") as d:
                    proc = start_server(kind, Path(d), args.before_src)
                    try:
                        log("run", scenario=sc, server=kind, watchers=watchers, rate=rate,
                            rep=rep, loadavg=os.getloadavg()[0])
                        if args.client == "go":
                            row = run_one_go(proc, watchers, rate, history, args.duration,
                                             args.per_stream, args.drain)
                        else:
                            row = run_one(proc, watchers, rate, history, args.duration,
                                          args.per_stream, args.procs, args.drain)
                    finally:
                        proc.stop()
                row.update(scenario=sc, server=kind, rep=rep)
                log("result", **row)
                rows.append(row)
    med = summarize(rows)
    print(f"median of {args.repeat} run(s) each; events summed over the runs; "
          f"{args.client} watch client")
    print("| scenario | server | watchers | w/s asked | w/s held | events delivered/expected "
          "| events/response | p50 ms | p99 ms | max ms | server cpu s | history caught up s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in med:
        print(f"| {r['scenario']} | {r['server']} | {r['watchers']:,} | {r['rate_asked']:g} "
              f"| {r['writes_per_s']:.1f} | {r['events_delivered']:,}/{r['events_expected']:,} "
              f"| {r['events_per_response']:.2f} "
              f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} "
              f"| {r['server_cpu_s']:.1f} "
              f"| {'-' if r['history_caught_up_s'] is None else r['history_caught_up_s']} |")
    by = {(r["scenario"], r["server"]): r for r in med}
    for sc in args.scenarios:
        e = by.get((sc, "etcd"))
        for kind in kinds:
            d = by.get((sc, kind))
            if kind == "etcd" or not e or not d:
                continue
            print(f"scenario {sc}: {kind}/etcd p99 = {d['p99_ms'] / max(e['p99_ms'], 1e-9):.2f}, "
                  f"p50 = {d['p50_ms'] / max(e['p50_ms'], 1e-9):.2f}, "
                  f"server cpu = {d['server_cpu_s'] / max(e['server_cpu_s'], 1e-9):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
