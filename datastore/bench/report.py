"""Reporting: live progress on stderr, merging per-process results into the summary
(what ``--json`` prints) and the human-readable summary.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from datastore.bench.config import BenchConfig
from datastore.bench.hist import Histogram
from datastore.util.progress import Progress as UtilProgress


class Progress:
    """The load's progress on stderr (``datastore.util.progress``): a live bar on a
    terminal, a line every ``progress_interval`` seconds otherwise, or nothing."""

    def __init__(self, cfg: BenchConfig, stream: Any = None) -> None:
        self.cfg = cfg
        self.out = stream if stream is not None else sys.stderr
        mode = {"off": "none"}.get(cfg.progress, cfg.progress)
        self.shown = UtilProgress(cfg.workload, 100.0, stream=self.out, mode=mode,
                                  interval=cfg.progress_interval)
        self.mode = self.shown.mode
        self.t0 = time.monotonic()
        self.last_line = self.t0
        self.started = False

    @property
    def interval(self) -> float:
        """How often the load loop reports: often on a terminal, else at most every second."""
        return 0.25 if self.mode == "tty" else min(1.0, self.cfg.progress_interval)

    def update(self, ops: int, errors: int) -> None:
        if self.mode == "none":
            return
        if not self.started:  # the display starts with the load (after pre-population)
            self.started = True
            self.shown.begin(self.t0)
        el = time.monotonic() - self.t0
        cfg = self.cfg
        if cfg.total is not None:
            frac = ops / cfg.total if cfg.total else 1.0
            if cfg.workload == "watch":
                frac = min(1.0, el / max(cfg.total / max(cfg.rate, 1e-9), 1e-9))
        else:
            span = (cfg.duration or 0.0) + (cfg.warmup if cfg.workload != "watch" else 0.0)
            frac = el / span if span else 0.0
        frac = max(0.0, min(1.0, frac))
        rate = ops / el if el > 0 else 0.0
        unit = "events" if cfg.workload == "watch" else "ops"
        self.shown.update(frac * 100, f"{ops:,} {unit}  {rate:,.0f}/s  errors {errors:,}")

    def done(self) -> None:
        self.shown.close()


def summary_line(s: dict[str, Any]) -> str:
    """One line, what the run did: the command's last line, on stderr (stdout has the
    summary, or with ``--json`` the data)."""
    where = ",".join(s["endpoints"])
    if s["workload"] == "watch":
        w = s["watch"]
        return (f"watch: {w['events']:,} of {w['events_expected']:,} events to {w['watchers']} "
                f"watchers from {w['writes']:,} writes to {where} in {s['elapsed_s']:.1f} s "
                f"({w['events_per_s']:,.0f} events/s, {s['errors']:,} errors)")
    return (f"{s['workload']}: {s['ops']:,} requests to {where} in {s['elapsed_s']:.1f} s "
            f"({s['ops_per_s']:,.0f}/s, p99 {s['latency_ms']['p99']:.1f} ms, "
            f"{s['errors']:,} errors)")


def merge_results(cfg: BenchConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-process results into the summary dict (what --json prints)."""
    hist = Histogram()
    ops = errors = 0
    codes: dict[str, int] = {}
    extra: dict[str, Any] = {}
    cpu = 0.0
    for r in results:
        hist.merge(Histogram.from_dict(r["hist"]))
        ops += r["ops"]
        errors += r["errors"]
        cpu += r["cpu_s"]
        for k, v in r["error_codes"].items():
            codes[k] = codes.get(k, 0) + v
        for k, v in r["extra"].items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "write_rate_target":
                extra[k] = extra.get(k, 0) + v
            else:
                extra.setdefault(k, v)
    t0 = min(r["t_start"] for r in results)
    t1 = max(r["t_end"] for r in results)
    elapsed = max(t1 - t0, 1e-9)
    summary: dict[str, Any] = {
        "workload": cfg.workload,
        "endpoints": cfg.endpoints,
        "clients": cfg.clients,
        "conns": cfg.effective_conns(),
        "procs": cfg.procs,
        "key_size": cfg.key_size,
        "val_size": cfg.val_size,
        "key_space": cfg.key_space,
        "elapsed_s": round(elapsed, 4),
        "ops": ops,
        "errors": errors,
        "error_codes": codes,
        "ops_per_s": round(ops / elapsed, 2),
        "latency_ms": hist.summary_ms(),
        "client_cpu_s": round(cpu, 3),
        "client_cpu_pct": round(cpu / elapsed * 100, 1),
        # Some load process used >85 % of a core: the generator may be the bottleneck.
        "client_saturated": any(r["cpu_s"] / max(r["t_end"] - r["t_start"], 1e-9) > 0.85
                                for r in results),
    }
    if cfg.workload == "txn":
        summary["txn"] = {"succeeded": extra.get("succeeded", 0),
                          "conflicts": extra.get("conflicts", 0)}
    if cfg.workload == "watch":
        writes = int(extra.get("writes", 0))
        watchers = int(extra.get("watchers", 0))
        wel = max(float(extra.get("write_elapsed_s", elapsed)), 1e-9)
        expected = writes * watchers
        summary["watch"] = {
            "watchers": watchers,
            "writes": writes,
            "write_errors": int(extra.get("write_errors", 0)),
            "write_rate_target": cfg.rate,
            "writes_per_s": round(writes / wel, 2),
            "write_latency_ms": extra.get("write_latency_ms", {}),
            "events": ops,
            "events_expected": expected,
            "delivered_ratio": round(ops / expected, 6) if expected else 0.0,
            "events_per_s": round(ops / wel, 2),
        }
        summary["ops_per_s"] = summary["watch"]["events_per_s"]
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """A human-readable summary."""
    lat = s["latency_ms"]
    lines = [
        f"workload {s['workload']}  endpoints {','.join(s['endpoints'])}  clients {s['clients']}"
        f"  conns {s['conns']}  procs {s['procs']}",
        f"keys {s['key_space']} x {s['key_size']} B, values {s['val_size']} B"
        + (f", prepopulated {s['prepopulated_keys']}" if s.get("prepopulated_keys") else ""),
        f"elapsed {s['elapsed_s']:.2f} s  ops {s['ops']}  errors {s['errors']}"
        + (f" {s['error_codes']}" if s["errors"] else ""),
    ]
    if s["workload"] == "watch":
        w = s["watch"]
        lines += [
            f"watchers {w['watchers']}  writes {w['writes']} ({w['writes_per_s']:.1f}/s, target "
            f"{w['write_rate_target']:g}/s)  events {w['events']}/{w['events_expected']} "
            f"({w['delivered_ratio'] * 100:.2f} %)",
            f"throughput {w['events_per_s']:,.1f} events/s",
            "event delivery latency ms: "
            f"p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
            f"max {lat['max']:.3f}  mean {lat['mean']:.3f}",
        ]
        wl = w.get("write_latency_ms") or {}
        if wl:
            lines.append(f"write latency ms: p50 {wl['p50']:.3f}  p99 {wl['p99']:.3f}  "
                         f"max {wl['max']:.3f}")
    else:
        lines += [
            f"throughput {s['ops_per_s']:,.1f} ops/s",
            f"latency ms: p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
            f"max {lat['max']:.3f}  mean {lat['mean']:.3f}",
        ]
    if "txn" in s:
        t = s["txn"]
        total = t["succeeded"] + t["conflicts"]
        pct = t["conflicts"] / total * 100 if total else 0.0
        lines.append(f"txn succeeded {t['succeeded']}  conflicts {t['conflicts']} ({pct:.2f} %)")
    lines.append(f"client cpu {s['client_cpu_s']:.2f} s ({s['client_cpu_pct']:.0f} % of one core)")
    if s.get("client_saturated"):
        lines.append("warning: a load process was CPU-bound; the client may be the bottleneck "
                     "(try --procs 2 or more, if there are idle cores)")
    return "\n".join(lines)
