#!/usr/bin/env python
"""One Kubernetes workload through a real kube-apiserver, on each storage backend in turn.

For each backend (datastore, etcd 3.6, etcd 3.4, kine/SQLite; 1 or 3 members) and each
round: a fresh ``datastore kube up`` with no nodes and the API server's own compaction off;
the controller-manager, scheduler and kwok are then stopped, so the only writers are the
load client and the API server itself. ``kubeload`` (our client-go v0.37.2 program,
tools/refs/kubeload/) then runs three phases:

- create: ``--pods`` pods by 32 clients as fast as they are taken (pods name a scheduler
  that does not exist, so nothing else touches them);
- list: the namespace's pods, paged at 500, ``--list-repeat`` times (median);
- watch: ``--watchers`` watches of the namespace, then ``--watch-pods`` creates at
  ``--watch-rate``/s; delay from each create's ack to each watcher's event (p99).

CPU comes from /proc/PID/stat (utime+stime) of the API server, of the storage members
(summed) and of kubeload itself, per phase; storage RSS after the run. With
``--pod-cache off`` the API server runs with ``--watch-cache-sizes=pods#0``: LISTs and
watches of pods then go to the storage rather than the API server's watch cache.

    python scripts/bench_controlplane.py                       # every backend, 3 rounds
    python scripts/bench_controlplane.py --quick               # small sizes, 1 round
    python scripts/bench_controlplane.py --backends datastore:1,etcd:1 --pod-cache off
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datastore.kube import controlplane  # noqa: E402
from datastore.kube.controlplane import ControlPlane  # noqa: E402
from datastore.testing import refs  # noqa: E402

COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
LABELS = {"datastore": "datastore", "etcd": "etcd 3.6", "etcd34": "etcd 3.4", "kine": "kine/SQLite"}
REFS_NEEDED = {"datastore": (), "etcd": ("etcd",), "etcd34": (), "kine": ("kine",)}
DEFAULT_BACKENDS = "datastore:1,datastore:3,etcd:1,etcd:3,etcd34:1,kine:1"


def parse_backends(spec: str) -> list[tuple[str, int]]:
    out = []
    for item in spec.split(","):
        name, _, n = item.strip().partition(":")
        if name not in LABELS:
            raise SystemExit(f"bench_controlplane: unknown backend {name!r} "
                             f"(one of {', '.join(LABELS)}; write NAME:MEMBERS)")
        members = int(n or 1)
        if name == "kine" and members != 1:
            raise SystemExit("bench_controlplane: kine runs as one process: use kine:1")
        out.append((name, members))
    return out


def ensure_built(backends: list[tuple[str, int]]) -> Path:
    names = {"kubernetes", "kwok", "kubeload"} | {r for b, _ in backends for r in REFS_NEEDED[b]}
    for ref in refs.REFS:
        if ref.name in names:
            refs.build(ref, log=lambda line: print(line, file=sys.stderr, flush=True))
    return refs.binary("kubeload")


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            vals[key] = int(rest.split()[0]) / 1024
    return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)


def list_metrics(cp: ControlPlane) -> dict[str, float]:
    """Pods the API server returned from each LIST source (watchcache / etcd) so far."""
    status, text = cp.api().get("/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in text.splitlines():
        if line.startswith("apiserver_storage_list_returned_objects_total{") and \
                'resource="pods"' in line:
            source = line.split('storage="', 1)[1].split('"', 1)[0]
            out[source] = out.get(source, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def run_one(kubeload: Path, backend: str, members: int, args: argparse.Namespace,
            pod_cache: bool, workdir: Path | None = None) -> dict[str, Any]:
    """One fresh control plane on ``backend``, one kubeload run; raw results and samples."""
    d = Path(tempfile.mkdtemp(prefix=f"bench-cp-{backend}{members}-", dir=workdir))
    extra = [] if pod_cache else ["--watch-cache-sizes=pods#0"]
    opts = controlplane.Options(d, backend=backend, members=members, nodes=0,
                                compaction_interval="0", extra_apiserver_args=extra,
                                timeout=args.up_timeout)
    load_before = os.getloadavg()
    lines: list[str] = []
    t0 = time.monotonic()
    try:
        try:
            cp = controlplane.up(opts, log=lines.append)
        except controlplane.KubeError as e:
            raise RuntimeError(f"{backend}:{members}: kube up failed: {e}") from e
        up_s = time.monotonic() - t0
        if not args.keep_controllers:
            for name in COMPONENTS[1:]:
                cp.daemon(name).stop()
        api_pid = cp.daemon("kube-apiserver").pid
        storage = [x.pid for x in cp.daemons if x.name not in COMPONENTS]
        before = list_metrics(cp)
        argv = [str(kubeload), f"--kubeconfig={cp.kubeconfig}", f"--pods={args.pods}",
                f"--clients={args.clients}", f"--page={args.page}",
                f"--list-repeat={args.list_repeat}", f"--watchers={args.watchers}",
                f"--watch-pods={args.watch_pods}", f"--watch-rate={args.watch_rate}",
                f"--timeout={args.watch_timeout:g}s",
                f"--pid=apiserver={api_pid}",
                f"--pid=storage={','.join(map(str, storage))}"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.run_timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{backend}:{members}: kubeload failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}")
        res = json.loads(proc.stdout)
        after = list_metrics(cp)
        rss = [rss_mb(p) for p in storage]
        dead = [x.name for x in cp.daemons if x.name not in COMPONENTS[1:] and not x.alive()]
        if dead:
            raise RuntimeError(f"{backend}:{members}: {', '.join(dead)} exited during the run")
        res["sampled"] = {
            "up_s": up_s, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "storage_rss_mb": [r[0] for r in rss], "storage_hwm_mb": [r[1] for r in rss],
            "list_source": {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after},
        }
        return res
    finally:
        controlplane.down(d, log=lambda _line: None)
        if not args.keep_dirs:
            shutil.rmtree(d, ignore_errors=True)


def derive(res: dict[str, Any]) -> dict[str, float]:
    """The figures the tables show, from one run's raw results."""
    out: dict[str, float] = {}
    c, ls, w, s = res.get("create"), res.get("list"), res.get("watch"), res["sampled"]
    if c:
        n = max(c["pods"], 1)
        out |= {"creates_s": c["per_s"], "create_p99": c["latency_ms"]["p99"],
                "create_errors": c["errors"],
                "api_us_create": c["cpu_s"]["apiserver"] / n * 1e6,
                "sto_us_create": c["cpu_s"]["storage"] / n * 1e6,
                "cli_us_create": c["cpu_s"]["client"] / n * 1e6,
                "cli_pct_create": c["cpu_s"]["client"] / c["seconds"] * 100,
                "sto_pct_create": c["cpu_s"]["storage"] / c["seconds"] * 100,
                "api_pct_create": c["cpu_s"]["apiserver"] / c["seconds"] * 100}
    if ls:
        n = max(ls["items"] * len(ls["runs_ms"]), 1)
        src = s["list_source"]
        out |= {"list_ms": ls["median_ms"], "list_items": ls["items"],
                "api_us_listed": ls["cpu_s"]["apiserver"] / n * 1e6,
                "sto_us_listed": ls["cpu_s"]["storage"] / n * 1e6,
                "list_from_cache": float(src.get("watchcache", 0) > src.get("etcd", 0))}
    if w:
        n = max(w["events_delivered"], 1)
        out |= {"watch_p99": w["from_ack_ms"]["p99"], "watch_send_p99": w["from_send_ms"]["p99"],
                "delivered": w["events_delivered"] / max(w["events_expected"], 1),
                "watch_rate": w["rate"],
                "api_us_event": w["cpu_s"]["apiserver"] / n * 1e6,
                "sto_us_event": w["cpu_s"]["storage"] / n * 1e6,
                "cli_pct_watch": w["cpu_s"]["client"] / w["seconds"] * 100}
    out["rss_mb"] = max(s["storage_rss_mb"])
    out["hwm_mb"] = max(s["storage_hwm_mb"])
    return out


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*runs) if runs else set()
    return {k: statistics.median(r[k] for r in runs if k in r) for k in keys}


def _f(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def reference(key: tuple[str, int], med: dict[tuple[str, int], dict[str, float]]) -> dict | None:
    """etcd 3.6 with the same member count (else 1 member): what ratios are against."""
    return med.get(("etcd", key[1])) or med.get(("etcd", 1))


def tables(med: dict[tuple[str, int], dict[str, float]], rounds: int) -> str:
    rows = ["| backend | members | creates/s | x etcd 3.6 | create p99 ms | LIST ms | x etcd 3.6 "
            "| LIST served from | watch p99 ms (after ack) | watch p99 ms (after send) "
            "| delivered |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, m in med.items():
        ref = reference(key, med) or {}
        rc = m.get("creates_s", 0) / ref["creates_s"] if ref.get("creates_s") else None
        rl = ref["list_ms"] / m["list_ms"] if ref.get("list_ms") and m.get("list_ms") else None
        src = "cache" if m.get("list_from_cache", 0) >= 0.5 else "storage"
        rows.append(
            f"| {LABELS[key[0]]} | {key[1]} | {_f(m.get('creates_s'))} | {_f(rc, 2)} "
            f"| {_f(m.get('create_p99'))} | {_f(m.get('list_ms'))} | {_f(rl, 2)} | {src} "
            f"| {_f(m.get('watch_p99'), 1)} | {_f(m.get('watch_send_p99'), 1)} "
            f"| {_f(m.get('delivered', 0) * 100, 1)}% |")
    cpu = ["| backend | members | apiserver µs/create | storage µs/create | storage µs/listed pod "
           "| apiserver µs/listed pod | storage µs/watch event | apiserver µs/watch event "
           "| storage RSS MB (peak) | load client µs/create | load client % of a core "
           "(create / watch) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, m in med.items():
        cpu.append(
            f"| {LABELS[key[0]]} | {key[1]} | {_f(m.get('api_us_create'))} "
            f"| {_f(m.get('sto_us_create'))} | {_f(m.get('sto_us_listed'), 1)} "
            f"| {_f(m.get('api_us_listed'), 1)} | {_f(m.get('sto_us_event'), 1)} "
            f"| {_f(m.get('api_us_event'), 1)} | {_f(m.get('rss_mb'))} ({_f(m.get('hwm_mb'))}) "
            f"| {_f(m.get('cli_us_create'))} "
            f"| {_f(m.get('cli_pct_create'))} / {_f(m.get('cli_pct_watch'))} |")
    return (f"Medians of {rounds} round(s).\n\n" + "\n".join(rows) + "\n\n" + "\n".join(cpu)
            + "\n")


def targets(med: dict[tuple[str, int], dict[str, float]]) -> str:
    """The standing targets: ≥ 0.8x etcd 3.6 on creates/s and LIST at 3 members; ≥ kine."""
    lines = []
    ds3, e3 = med.get(("datastore", 3)), med.get(("etcd", 3))
    if ds3 and e3:
        rc = ds3["creates_s"] / e3["creates_s"]
        rl = e3["list_ms"] / ds3["list_ms"]
        lines.append(f"- creates/s at 3 members ≥ 0.8x etcd 3.6: {rc:.2f} "
                     f"({'met' if rc >= 0.8 else 'NOT met'})")
        lines.append(f"- LIST at 3 members ≥ 0.8x etcd 3.6: {rl:.2f} "
                     f"({'met' if rl >= 0.8 else 'NOT met'})")
    kine = med.get(("kine", 1))
    for key, m in med.items():
        if key[0] != "datastore" or not kine:
            continue
        checks = [("creates/s", m["creates_s"] >= kine["creates_s"]),
                  ("LIST", m["list_ms"] <= kine["list_ms"]),
                  ("watch p99", m["watch_p99"] <= kine["watch_p99"])]
        bad = [n for n, ok in checks if not ok]
        lines.append(f"- datastore {key[1]} member(s) ≥ kine: "
                     + ("met on creates/s, LIST and watch p99" if not bad
                        else f"NOT met on {', '.join(bad)}"))
    return "\n".join(lines) + ("\n" if lines else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help=f"NAME:MEMBERS, comma-separated (default {DEFAULT_BACKENDS})")
    p.add_argument("--pods", type=int, default=10000, help="pods in the create phase (10000)")
    p.add_argument("--clients", type=int, default=32, help="concurrent creating clients (32)")
    p.add_argument("--page", type=int, default=500, help="LIST page size (500)")
    p.add_argument("--list-repeat", type=int, default=5, help="full LISTs per run (5)")
    p.add_argument("--watchers", type=int, default=100, help="watchers (100)")
    p.add_argument("--watch-pods", type=int, default=1000,
                   help="pods created while the watchers listen (1000)")
    p.add_argument("--watch-rate", type=float, default=100.0,
                   help="creates per second in the watch phase (100)")
    p.add_argument("--watch-timeout", type=float, default=120.0,
                   help="seconds to wait for the last watch events (120)")
    p.add_argument("--repeat", type=int, default=3, help="rounds over all backends (3)")
    p.add_argument("--pod-cache", choices=("on", "off"), default="on",
                   help="the API server's watch cache for pods (on: as shipped; off: LIST and "
                        "watch go to the storage)")
    p.add_argument("--quick", action="store_true",
                   help="2000 pods, 20 watchers, 200 watch pods, 3 LISTs, 1 round")
    p.add_argument("--keep-controllers", action="store_true",
                   help="leave controller-manager, scheduler and kwok running")
    p.add_argument("--keep-dirs", action="store_true", help="keep each run's directory")
    p.add_argument("--workdir", type=Path, default=None, help="where run directories go")
    p.add_argument("--up-timeout", type=float, default=300.0)
    p.add_argument("--run-timeout", type=float, default=1800.0)
    p.add_argument("--out", type=Path, help="also write the Markdown here")
    p.add_argument("--json", type=Path, help="write every run's raw results here")
    args = p.parse_args()
    if args.quick:
        args.pods, args.watchers, args.watch_pods, args.list_repeat, args.repeat = (
            2000, 20, 200, 3, 1)
    backends = parse_backends(args.backends)
    try:
        kubeload = ensure_built(backends)
    except refs.RefError as e:
        print(f"bench_controlplane: error: {e}", file=sys.stderr)
        return 2
    raw: dict[str, list[dict[str, Any]]] = {}
    failed: list[str] = []
    for r in range(args.repeat):
        for backend, members in backends:  # interleaved, so drift in load hits every backend
            key = f"{backend}:{members}"
            print(f"round {r + 1}/{args.repeat}: {LABELS[backend]}, {members} member(s) ...",
                  file=sys.stderr, flush=True)
            res = None
            for attempt in (1, 2):  # a run that fails to start is tried once more
                try:
                    res = run_one(kubeload, backend, members, args, args.pod_cache == "on",
                                  args.workdir)
                    break
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"  attempt {attempt} failed: {e}", file=sys.stderr, flush=True)
            if res is None:
                failed.append(f"{key} (round {r + 1})")
                continue
            d = derive(res)
            print(f"  creates/s {d.get('creates_s', 0):.0f}, LIST {d.get('list_ms', 0):.0f} ms, "
                  f"watch p99 {d.get('watch_p99', 0):.1f} ms, delivered "
                  f"{d.get('delivered', 0) * 100:.1f}%, load {res['sampled']['loadavg_before'][0]:.1f}",
                  file=sys.stderr, flush=True)
            raw.setdefault(key, []).append(res)
            if args.json:  # kept up to date, so an interrupted run still leaves its data
                args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                 "runs": raw, "failed": failed}, indent=1))
    med = {(k.split(":")[0], int(k.split(":")[1])): median_of([derive(x) for x in runs])
           for k, runs in raw.items()}
    loads = [x["sampled"]["loadavg_before"][0] for runs in raw.values() for x in runs]
    head = (f"{platform.node()}: {os.cpu_count()} CPUs, load average (1 min) before runs "
            f"{min(loads):.1f} to {max(loads):.1f}; pods {args.pods}, clients {args.clients}, "
            f"LIST page {args.page} x {args.list_repeat}, {args.watchers} watchers x "
            f"{args.watch_pods} pods at {args.watch_rate:g}/s, pod watch cache {args.pod_cache}\n\n")
    text = head + tables(med, args.repeat) + "\n" + targets(med)
    print(text)
    if args.out:
        args.out.write_text(text)
    if failed:
        print(f"bench_controlplane: runs that failed twice: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
