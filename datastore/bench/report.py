"""Reporting: live progress on stderr, merging per-process results into the summary
(what ``--json`` prints) and the human-readable summary.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from datastore.bench.config import BenchConfig
from datastore.bench.hist import Histogram


class Progress:
    """A progress bar on a tty, periodic one-line progress otherwise, or nothing."""

    def __init__(self, cfg: BenchConfig, stream: Any = None) -> None:
        self.cfg = cfg
        self.out = stream if stream is not None else sys.stderr
        mode = cfg.progress
        if mode == "auto":
            mode = "tty" if getattr(self.out, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self.t0 = time.monotonic()
        self.last_line = self.t0
        self.last_ops = 0
        self.drawn = False

    @property
    def interval(self) -> float:
        return 0.25 if self.mode == "tty" else min(1.0, self.cfg.progress_interval)

    def update(self, ops: int, errors: int) -> None:
        if self.mode in ("none", "off"):
            return
        now = time.monotonic()
        el = now - self.t0
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
        if self.mode == "tty":
            width = 30
            fill = int(frac * width)
            bar = "#" * fill + "-" * (width - fill)
            self.out.write(f"\r{cfg.workload} [{bar}] {frac * 100:5.1f}% {ops} ops "
                           f"{rate:,.0f}/s err {errors} {el:5.1f}s ")
            self.out.flush()
            self.drawn = True
        elif now - self.last_line >= cfg.progress_interval:
            recent = (ops - self.last_ops) / (now - self.last_line)
            self.out.write(f"[bench {cfg.workload}] {el:.1f}s {frac * 100:.0f}% ops={ops} "
                           f"avg={rate:.0f}/s last={recent:.0f}/s errors={errors}\n")
            self.out.flush()
            self.last_line, self.last_ops = now, ops

    def done(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


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
