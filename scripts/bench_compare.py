#!/usr/bin/env python
"""Side-by-side benchmark: etcd 3.4, etcd 3.6, kine and datastore on this machine, same loads.

For each target (default ``etcd34,etcd36,kine,datastore``) a fresh cluster (1 or 3 members)
is started in a temporary directory, every load (workload x clients) is run against it with
the same client (``datastore.bench``), then the cluster is stopped before the next target
starts, so the servers never compete for CPU. Prints a markdown table with, per target,
ops/s, p99 and the server CPU per request (µs of CPU of all the target's processes over
the load, divided by the requests served: steadier than ops/s on a shared machine), then
the ratio datastore/each other target.

Targets: ``etcd34`` (Debian's etcd 3.4 on PATH; ``etcd`` is the same), ``etcd36`` (etcd 3.6
built by ``scripts/build_refs.py``), ``kine`` (kine on SQLite, always one process, built
likewise), ``datastore``, and the ceiling a Python gRPC server reaches on this machine
(``datastore.bench.noop_server``, one process): ``noop``, a plain ``grpc.aio`` KV servicer
that answers without doing anything, and ``noop-raw``, a generic handler that echoes fixed
bytes without parsing. kine supports neither serializable nor keys-only ranges, so its
``get-serializable`` row is n/a.

    python scripts/bench_compare.py                       # 10 s per load, single node
    python scripts/bench_compare.py --duration 5 --out bench.md --json-out bench.json
    python scripts/bench_compare.py --target etcd,etcd    # test the comparison itself
    python scripts/bench_compare.py --cluster 3           # kine stays one process
    python scripts/bench_compare.py --with-noop           # adds noop as the last target
    python scripts/bench_compare.py --target etcd34,datastore,noop,noop-raw
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.bench import BenchConfig, run_bench
from datastore.bench.noop_server import noop_proc
from datastore.kube.backends import members as backend_members
from datastore.testing import refs
from datastore.testing.procs import (
    ETCD_BIN,
    ServerProc,
    datastore_proc,
    etcd_proc,
    free_port,
)


def etcd36_proc(base: Path, name: str = "etcd0", **kw: Any) -> ServerProc:
    """etcd 3.6 (the reference build), with ``etcd_proc``'s signature."""
    return etcd_proc(base, name, binary=refs.binary("etcd"), **kw)


def kine_proc(base: Path, name: str = "kine0", extra: list[str] | None = None,
              client_port: int | None = None, peer_port: int | None = None,
              initial_cluster: str | None = None) -> ServerProc:
    """kine on SQLite, started as ``datastore kube up --backend kine`` starts it; the
    peer arguments are ignored (kine is one process over one database)."""
    cp = client_port or free_port()
    m = backend_members("kine", base / name, [(cp, 0)], kine_bin=str(refs.binary("kine")))[0]
    return ServerProc("kine", name, base / name, cp, 0, [*m.argv, *(extra or [])],
                      base / f"{name}.log")


LAUNCHERS: dict[str, Callable[..., ServerProc]] = {
    "etcd34": etcd_proc,
    "etcd36": etcd36_proc,
    "kine": kine_proc,
    "datastore": datastore_proc,
    "noop": noop_proc,
    "noop-raw": functools.partial(noop_proc, mode="raw"),
}
ALIASES = {"etcd": "etcd34"}  # Debian's etcd, the first oracle
NOOP_KINDS = ("noop", "noop-raw")
SINGLE_PROCESS = (*NOOP_KINDS, "kine")  # nothing to replicate: one process is the "cluster"
ETCD_KINDS = ("etcd34", "etcd36")


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all threads) from /proc; 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return 0.0
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cluster:
    """1 or 3 members of one kind, on 127.0.0.1, in a temporary directory."""

    def __init__(self, kind: str, size: int, base: Path, extra: list[str] | None = None) -> None:
        self.kind = kind
        self.base = base
        kind = ALIASES.get(kind, kind)
        launcher = LAUNCHERS[kind]
        if kind in SINGLE_PROCESS:
            size = 1
        prefix = {"etcd34": "etcd", "etcd36": "etcd", "datastore": "ds"}.get(kind, kind)
        names = [f"{prefix}{i}" for i in range(size)]
        ports = [(free_port(), free_port()) for _ in names]
        initial = None
        if size > 1:
            initial = ",".join(f"{n}=http://127.0.0.1:{pp}" for n, (_, pp) in zip(names, ports,
                                                                                  strict=True))
        self.members = [launcher(base, n, extra=extra, client_port=cp, peer_port=pp,
                                 initial_cluster=initial)
                        for n, (cp, pp) in zip(names, ports, strict=True)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 60.0) -> None:
        # Members of a new cluster must start together: one alone never gets a quorum.
        with ThreadPoolExecutor(len(self.members)) as ex:
            for f in [ex.submit(m.start, timeout) for m in self.members]:
                f.result()
        self.wait_writable(timeout)

    def wait_writable(self, timeout: float) -> None:
        """Until a Put succeeds (a leader exists and the cluster commits)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        with grpc.insecure_channel(self.members[0].endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            while time.monotonic() < deadline:
                try:
                    kv.Put(rpc_pb2.PutRequest(key=b"bench-compare/ready", value=b"1"), timeout=2)
                    return
                except grpc.RpcError as e:
                    last = e
                    time.sleep(0.1)  # poll interval while waiting for a leader
        why = f"{last.code().name}: {last.details()}" if isinstance(last, grpc.Call) else last
        raise TimeoutError(f"{self.kind} cluster not writable after {timeout}s ({why})")

    def cpu_seconds(self) -> float:
        """CPU time of every process of the target (all members, all threads)."""
        return sum(proc_cpu_seconds(m.popen.pid) for m in self.members if m.popen is not None)

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def log_tails(self) -> str:
        return "\n".join(f"--- {m.name} ---\n{m.log_tail(20)}" for m in self.members)


def run_target(kind: str, args: argparse.Namespace, loads: list[tuple[str, int]],
               label: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Start a cluster of `kind`, run every load against it, stop it."""
    results: dict[tuple[str, int], dict[str, Any]] = {}
    base = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    extra = args.etcd_arg if kind in ETCD_KINDS else \
        {"datastore": args.datastore_arg}.get(kind, [])
    try:
        cluster = Cluster(kind, args.cluster, base, extra)
    except refs.RefError as e:  # a reference program not built on this machine
        print(f"[{label}] {e}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
        return {ld: {"error": f"not built: {e}"} for ld in loads}
    try:
        try:
            cluster.start(args.start_timeout)
        except Exception as e:
            msg = f"{type(e).__name__}: {e}".splitlines()[0]
            print(f"[{label}] failed to start: {msg}\n{cluster.log_tails()}", file=sys.stderr)
            return {ld: {"error": f"start failed: {msg}"} for ld in loads}
        print(f"[{label}] {kind} x{len(cluster.members)} up at {','.join(cluster.endpoints)}",
              file=sys.stderr)
        for workload, clients in loads:
            cfg = BenchConfig(
                endpoints=cluster.endpoints, workload=workload, clients=clients,
                conns=args.conns, procs=args.procs, duration=args.duration,
                key_size=args.key_size, val_size=args.val_size, key_space=args.key_space,
                warmup=args.warmup, timeout=args.timeout,
                progress="none" if args.quiet else "auto", progress_interval=5.0,
            )
            print(f"[{label}] {workload} clients={clients} ...", file=sys.stderr)
            marks: dict[str, tuple[float, float]] = {}

            def on_phase(phase: str, marks: dict[str, tuple[float, float]] = marks) -> None:
                marks[phase] = (time.monotonic(), cluster.cpu_seconds())

            try:
                s = run_bench(cfg, on_phase=on_phase)
            except Exception as e:
                s = {"error": f"{type(e).__name__}: {e}"}
                print(f"[{label}]   failed: {s['error']}", file=sys.stderr)
            else:
                (t0, c0), (t1, c1) = marks["load-start"], marks["load-end"]
                # Server CPU over the load (warm-up included, pre-population excluded).
                s["server_cpu_pct"] = round((c1 - c0) / max(t1 - t0, 1e-9) * 100, 1)
                # CPU per request holds up better than ops/s on a machine others load too
                s["server_cpu_us_per_op"] = round(
                    s["server_cpu_pct"] / 100 / s["ops_per_s"] * 1e6, 1) if s["ops"] else None
                print(f"[{label}]   {s['ops_per_s']:.0f} ops/s p99 {s['latency_ms']['p99']:.2f} ms"
                      f" errors {s['errors']} server cpu {s['server_cpu_pct']:.0f}% client cpu "
                      f"{s['client_cpu_pct']:.0f}%", file=sys.stderr)
            results[(workload, clients)] = s
    finally:
        cluster.stop()
        if not args.keep_dirs:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"[{label}] data and logs kept in {base}", file=sys.stderr)
    return results


def _fmt(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _get(r: dict[str, Any], *path: str) -> float | None:
    cur: Any = r
    for p in path:
        if not isinstance(cur, dict) or cur.get(p) is None:
            return None
        cur = cur[p]
    return float(cur)


def _ratio(x: float | None, y: float | None) -> str:
    return _fmt(x / y, 2) if x is not None and y else "n/a"


def markdown_table(labels: list[str], loads: list[tuple[str, int]],
                   res: list[dict[tuple[str, int], dict[str, Any]]],
                   kinds: list[str] | None = None) -> str:
    """Per target: ops/s, p99 and server CPU µs per request; then the subject's ops/s over
    each other target's (subject: datastore if it ran, else the last target that is not a
    noop server) and its p99 over the first target's."""
    kinds = [ALIASES.get(k, k) for k in (kinds or labels)]
    subjects = [i for i, k in enumerate(kinds) if k == "datastore"] or \
        [i for i, k in enumerate(kinds) if k not in NOOP_KINDS] or [len(kinds) - 1]
    s_i = subjects[-1]
    b = labels[s_i]
    others = [i for i in range(len(labels)) if i != s_i]
    head = ["workload", "clients"]
    for lab in labels:
        head += [f"{lab} ops/s", f"{lab} p99 ms", f"{lab} cpu µs/op"]
    head += [f"ops/s {b}/{labels[i]}" for i in others]
    if s_i != 0:
        head.append(f"p99 {b}/{labels[0]}")
    head += ["server cpu % " + "/".join(labels), "client cpu % " + "/".join(labels)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    notes: list[str] = []
    for ld in loads:
        row = [ld[0], str(ld[1])]
        for r in res:
            served = bool(r[ld].get("ops"))  # a load that failed throughout has no p99
            row += [_fmt(_get(r[ld], "ops_per_s")),
                    _fmt(_get(r[ld], "latency_ms", "p99") if served else None, 2),
                    _fmt(_get(r[ld], "server_cpu_us_per_op"))]
        rs = res[s_i][ld]
        row += [_ratio(_get(rs, "ops_per_s"), _get(res[i][ld], "ops_per_s")) for i in others]
        if s_i != 0:
            row.append(_ratio(_get(rs, "latency_ms", "p99"), _get(res[0][ld], "latency_ms", "p99")))
        row.append("/".join(_fmt(_get(r[ld], "server_cpu_pct")) for r in res))
        row.append("/".join(_fmt(_get(r[ld], "client_cpu_pct")) for r in res))
        errs = [f"{lab}: {r[ld]['error'] if 'error' in r[ld] else r[ld]['errors']} errors"
                for lab, r in zip(labels, res, strict=True)
                if "error" in r[ld] or r[ld].get("errors")]
        if errs:
            notes.append(f"{ld[0]}/{ld[1]}: " + "; ".join(errs))
            row[0] += f" [{len(notes)}]"
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines.append("")
        lines += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except Exception:
        return "unknown"


def versions(kinds: list[str]) -> str:
    """The reference programs that ran, e.g. "etcd 3.4.23, etcd 3.6.16, kine v0.17.5"."""
    out = []
    for k in dict.fromkeys(kinds):
        if k in ETCD_KINDS:
            try:
                binary = str(refs.binary("etcd")) if k == "etcd36" else ETCD_BIN
            except refs.RefError:
                continue
            out.append("etcd " + _first_line([binary, "--version"]).split(":", 1)[-1].strip())
        elif k == "kine":
            try:
                out.append("kine " + refs.ref_for("kine").version)
            except Exception:
                continue
    return ", ".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="etcd34,etcd36,kine,datastore",
                   help="comma list of 1-6 server kinds (etcd34 (= etcd)|etcd36|kine|datastore|"
                        "noop|noop-raw); the ratios are datastore/each other target. Use "
                        "etcd,etcd to test the comparison without datastore")
    p.add_argument("--with-noop", action="store_true",
                   help="add the do-nothing servicer (noop) as the last target")
    p.add_argument("--only-etcd", action="store_true", help="shorthand for --target etcd34")
    p.add_argument("--cluster", type=int, choices=(1, 3), default=1, help="members per cluster")
    p.add_argument("--workloads", default="put,get,get-serializable,txn")
    p.add_argument("--clients", default="16,128", help="comma list of client counts")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each load")
    p.add_argument("--conns", type=int, default=0, help="gRPC channels (0: bench default)")
    p.add_argument("--procs", type=int, default=1, help="client processes per load")
    p.add_argument("--key-size", type=int, default=32)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--key-space", type=int, default=10000)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--etcd-arg", action="append", default=[], help="extra etcd flag (repeat)")
    p.add_argument("--datastore-arg", action="append", default=[],
                   help="extra datastore serve flag (repeat)")
    p.add_argument("--out", type=Path, help="also write the markdown report here")
    p.add_argument("--json-out", type=Path, help="write all raw summaries as JSON here")
    p.add_argument("--keep-dirs", action="store_true", help="keep data dirs and server logs")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-load progress")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = ["etcd34"] if args.only_etcd else [ALIASES.get(k.strip(), k.strip())
                                               for k in args.target.split(",") if k.strip()]
    if args.with_noop and "noop" not in kinds:
        kinds.append("noop")
    if not 1 <= len(kinds) <= 6 or any(k not in LAUNCHERS for k in kinds):
        print(f"--target must be 1-6 of {sorted([*LAUNCHERS, *ALIASES])}", file=sys.stderr)
        return 2
    labels = kinds if len(set(kinds)) == len(kinds) else [f"{k}#{i + 1}" for i, k in
                                                           enumerate(kinds)]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    loads = [(w, c) for w in workloads for c in clients]

    res = [run_target(k, args, loads, lab) for k, lab in zip(kinds, labels, strict=True)]

    table = markdown_table(labels, loads, res, kinds)
    header = (
        f"## {' vs '.join(reversed(labels))} ({args.cluster} member"
        f"{'s' if args.cluster > 1 else ''})\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end, {versions(kinds)}, "
        f"Python {platform.python_version()}. Client: datastore.bench "
        f"(grpc.aio, procs={args.procs}, conns={args.conns or 'default'}), "
        f"{args.duration:g} s per load after {args.warmup:g} s warm-up, keys {args.key_space} x "
        f"{args.key_size} B, values {args.val_size} B. Client and server share the machine. "
        f"cpu µs/op: the server's CPU (all its processes) per request.\n"
    )
    report = header + "\n" + table + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    if args.json_out:
        raw = {lab: {f"{w}/{c}": r[(w, c)] for (w, c) in loads} for lab, r in
               zip(labels, res, strict=True)}
        args.json_out.write_text(json.dumps(raw, indent=2, sort_keys=True))
    failed = any("error" in r[ld] for r in res for ld in loads)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
