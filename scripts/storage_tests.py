#!/usr/bin/env python3
"""Kubernetes's own storage tests (k8s.io/apiserver) against the datastore, etcd 3.6 or kine.

    python3 scripts/build_refs.py storagetests etcd kine   # the test binaries and servers
    python3 scripts/storage_tests.py                        # the datastore (this venv's)
    python3 scripts/storage_tests.py --backend etcd --suite etcd3 -run 'TestWatch$'
    python3 scripts/storage_tests.py --backend all --json results.json

The suites are the apiserver's tests compiled with our testserver package (see
tools/refs/storagetests/), which starts a fresh server process for each RunEtcd. Backends:
the datastore, etcd 3.6 (`etcd`), etcd 3.7 (`etcd37`: the version the suites are written
for, so the oracle) and kine. Each suite runs in one test process, as `go test` runs it,
with a timeout per top-level test (a hung test is killed and reported, the rest still run).
Counts are of leaf tests (a test with subtests counts through them).

EXCLUSIONS below is the one list of tests allowed to fail, each with its reason; an
excluded test is still run and reported, and one that starts passing is pointed out.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datastore.testing import refs  # noqa: E402

SUITES = {"etcd3": "etcd3.test", "cacher": "cacher.test", "registry": "registry.test"}
BACKENDS = ("datastore", "etcd", "etcd37", "kine")

# Tests allowed to fail on a backend, with the reason. Keys are "suite:TestName" (a leaf or
# any test above it); the value maps backends ("*" for all) to the reason. The datastore
# has none: only a test reaching into embedded etcd's internals, which no external server
# can offer, could be excluded for it (none of these suites does). The suites are written
# for etcd 3.7 (the server they embed), so etcd 3.6 fails the tests that insist on 3.7's
# KV.RangeStream (elsewhere the apiserver falls back to paginated lists on 3.6).
_RANGE_STREAM = "needs KV.RangeStream, new in etcd 3.7: etcd 3.6 answers Unimplemented"
EXCLUSIONS: dict[str, dict[str, str]] = {
    "etcd3:TestGetListStreamMultiChunk": {"etcd": _RANGE_STREAM},
    "etcd3:TestWatchChanSync/RangeStream": {"etcd": _RANGE_STREAM},
    "etcd3:TestWatchChanSyncStreamMatchesPaginated": {"etcd": _RANGE_STREAM},
    "etcd3:TestWatchChanSyncStreamCompactionError": {"etcd": _RANGE_STREAM},
    "etcd3:TestWatchChanSyncStreamMetrics/success_records_a_listStream_request": {
        "etcd": _RANGE_STREAM},
}

RESULT = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+) \(([\d.]+)s\)")
EVENT = re.compile(r"^=== (RUN|PAUSE|CONT)\s+(\S+)")


@dataclass
class SuiteResult:
    suite: str
    backend: str
    results: dict[str, str] = field(default_factory=dict)  # every test (not only leaves)
    seconds_by_test: dict[str, float] = field(default_factory=dict)  # top-level tests
    timed_out: list[str] = field(default_factory=list)
    seconds: float = 0.0
    log: str = ""

    def leaves(self) -> dict[str, str]:
        """Leaf results; a parent that failed by itself (no failing subtest) counts as one."""
        out = {}
        for k, v in self.results.items():
            below = [o for o in self.results if o.startswith(k + "/")]
            if not below or (v == "FAIL" and all(self.results[o] != "FAIL" for o in below)):
                out[k] = v
        return out


def exclusion(suite: str, backend: str, test: str) -> str | None:
    """The reason ``test`` may fail on ``backend``, if it is excluded."""
    parts = test.split("/")
    for i in range(len(parts), 0, -1):
        reasons = EXCLUSIONS.get(f"{suite}:{'/'.join(parts[:i])}", {})
        if backend in reasons or "*" in reasons:
            return reasons.get(backend) or reasons["*"]
    return None


def backend_binary(backend: str, datastore_bin: str | None) -> str:
    if backend == "datastore":
        path = datastore_bin or str(Path(sys.executable).parent / "datastore")
        if not os.access(path, os.X_OK):
            sys.exit(f"storage_tests: no datastore executable at {path}: install the venv "
                     f"(pip install -e .) or pass --datastore-bin")
        return path
    return str(refs.binary(backend))


def list_tests(binary: Path, run_filter: str) -> list[str]:
    top = run_filter.split("/", 1)[0] if run_filter else "."
    out = subprocess.run([str(binary), "-test.list", top], check=True, capture_output=True,
                         text=True).stdout
    return [n for n in out.split() if n.startswith("Test")]


def _lines(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def run_suite(suite: str, binary: Path, backend: str, server_bin: str, run_filter: str,
              timeout_s: float, log_dir: Path) -> SuiteResult:
    """Run a suite in one test process, as ``go test`` does (some tests lean on global state
    earlier tests left, e.g. the storage feature checker), with a watchdog per top-level
    test: a test running longer than timeout_s is killed and reported, and the process is
    started again for the tests that have not run (likewise after a crash)."""
    kind = "etcd" if backend == "etcd37" else backend  # the flags the testserver passes
    env = dict(os.environ, STORAGE_BACKEND=kind, STORAGE_BACKEND_BIN=server_bin)
    sub = run_filter.split("/", 1)[1] if "/" in run_filter else ""
    remaining = list_tests(binary, run_filter)
    result = SuiteResult(suite, backend, log=str(log_dir / f"{backend}-{suite}.log"))
    t0 = time.monotonic()
    with open(result.log, "w") as log, tempfile.TemporaryDirectory(prefix="k8s-storage-") as tmp:
        env["TMPDIR"] = tmp  # the servers' data dirs (t.TempDir) land here, removed after
        while remaining:
            pattern = "^(" + "|".join(map(re.escape, remaining)) + ")$" + (f"/{sub}" if sub else "")
            proc = subprocess.Popen(
                [str(binary), "-test.v", "-test.count=1", "-test.timeout=0", "-test.run", pattern],
                cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True)
            q: queue.Queue = queue.Queue()
            threading.Thread(target=_lines, args=(proc.stdout, q), daemon=True).start()
            active: dict[str, float] = {}  # running top-level test -> when it (re)started
            started: list[str] = []
            killed: list[str] = []
            while True:
                try:
                    line = q.get(timeout=1.0)
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                log.write(line)
                if m := RESULT.match(line):
                    verdict, name = m.group(1), m.group(2)
                    result.results[name] = verdict
                    if "/" not in name:
                        active.pop(name, None)
                        result.seconds_by_test[name] = float(m.group(3))
                        print(f"  [{backend} {suite}] {name}: {verdict} ({m.group(3)} s)",
                              flush=True)
                elif m := EVENT.match(line):
                    kind, name = m.group(1), m.group(2)
                    if kind == "RUN":
                        started.append(name)
                    if "/" not in name:
                        if kind == "PAUSE":
                            active.pop(name, None)
                        else:
                            active[name] = time.monotonic()
                now = time.monotonic()
                if over := [n for n, since in active.items() if now - since > timeout_s]:
                    killed = over
                    log.write(f"\n*** storage_tests: {', '.join(over)} ran over {timeout_s:.0f} s:"
                              f" killed\n")
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for name in started:  # cut off by a crash or by the watchdog
                result.results.setdefault(name, "FAIL")
            result.timed_out += killed
            done = [n for n in remaining if n in result.results]
            if proc.returncode != 0 and not done:  # cannot start at all: no point retrying
                for n in remaining:
                    result.results[n] = "FAIL"
                break
            remaining = [n for n in remaining if n not in result.results]
    result.seconds = time.monotonic() - t0
    return result


def summarise(results: list[SuiteResult]) -> dict:
    """Counts per backend and suite, failing names, and excluded tests that passed."""
    summary: dict = {}
    for r in results:
        leaves = r.leaves()
        failed = sorted(k for k, v in leaves.items() if v == "FAIL")
        excluded = [k for k in failed if exclusion(r.suite, r.backend, k)]
        unexpected_pass = sorted(k for k, v in leaves.items()
                                 if v == "PASS" and exclusion(r.suite, r.backend, k))
        summary.setdefault(r.backend, {})[r.suite] = {
            "passed": sum(v == "PASS" for v in leaves.values()),
            "failed": len(failed) - len(excluded),
            "excluded": len(excluded),
            "skipped": sum(v == "SKIP" for v in leaves.values()),
            "seconds": round(r.seconds, 1),
            "failures": [k for k in failed if k not in excluded],
            "excluded_failures": excluded,
            "excluded_but_passed": unexpected_pass,
            "timed_out": r.timed_out,
            "log": r.log,
        }
    return summary


def print_summary(summary: dict) -> None:
    print("\nbackend    suite      passed  failed  excluded  skipped  wall")
    for backend, suites in summary.items():
        for suite, s in suites.items():
            print(f"{backend:<10} {suite:<9} {s['passed']:>7} {s['failed']:>7} "
                  f"{s['excluded']:>9} {s['skipped']:>8}  {s['seconds']:.0f} s")
    for backend, suites in summary.items():
        for suite, s in suites.items():
            print(f"log {backend} {suite}: {s['log']}")
            for name in s["failures"]:
                print(f"FAIL {backend} {suite}:{name}")
            for name in s["timed_out"]:
                print(f"TIMEOUT {backend} {suite}:{name}")
            for name in s["excluded_but_passed"]:
                print(f"NOTE {backend} {suite}:{name} is excluded but passed: drop the exclusion?")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="datastore", choices=[*BACKENDS, "all"])
    p.add_argument("--suite", default=",".join(SUITES),
                   help=f"comma-separated, of {', '.join(SUITES)}")
    p.add_argument("-run", "--run", dest="run", default="",
                   help="go test -run pattern (top-level part matched per test process)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per top-level test")
    p.add_argument("--datastore-bin", help="the datastore executable (default: this venv's)")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--log-dir", help="where the suites' full output goes (default: a temp dir)")
    ns = p.parse_args(argv)
    suites = [s.strip() for s in ns.suite.split(",") if s.strip()]
    if bad := [s for s in suites if s not in SUITES]:
        p.error(f"unknown suite {', '.join(bad)} (use {', '.join(SUITES)})")
    backends = list(BACKENDS) if ns.backend == "all" else [ns.backend]
    log_dir = Path(ns.log_dir or tempfile.mkdtemp(prefix="k8s-storage-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        binaries = {s: refs.binary(SUITES[s]) for s in suites}  # once: the build may change
        servers = {b: backend_binary(b, ns.datastore_bin) for b in backends}
        results = []
        for backend in backends:
            for suite in suites:
                results.append(run_suite(suite, binaries[suite], backend, servers[backend],
                                         ns.run, ns.timeout, log_dir))
    except refs.RefError as e:
        print(f"storage_tests: error: {e}", file=sys.stderr)
        return 2
    summary = summarise(results)
    print_summary(summary)
    if ns.json:
        Path(ns.json).write_text(json.dumps(summary, indent=1) + "\n")
    failed = any(s["failed"] for suites in summary.values() for s in suites.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
