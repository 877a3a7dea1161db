"""Smoke test of scripts/bench_controlplane.py: kubeload builds, and one tiny run on a
1-member datastore control plane gives complete, sane results (no performance bounds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from datastore.testing import refs

ROOT = Path(__file__).resolve().parents[1]
PODS, WATCHERS, WATCH_PODS, LISTS = 60, 3, 20, 2


def test_kubeload_rejects_a_missing_kubeconfig() -> None:
    refs.build(refs.ref_for("kubeload"), log=lambda _line: None)
    proc = subprocess.run([str(refs.binary("kubeload"))], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2
    assert "--kubeconfig is required" in proc.stderr


@pytest.mark.timeout(300)
def test_one_tiny_run_on_datastore(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "runs.json", tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_controlplane.py"),
         "--backends", "datastore:1", "--pods", str(PODS), "--watchers", str(WATCHERS),
         "--watch-pods", str(WATCH_PODS), "--watch-rate", "200", "--watch-timeout", "30",
         "--list-repeat", str(LISTS),
         "--page", "25", "--repeat", "1", "--workdir", str(tmp_path),
         "--json", str(out_json), "--out", str(out_md)],
        capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(out_json.read_text())["runs"]["datastore:1"]

    create = run["create"]
    assert (create["pods"], create["errors"]) == (PODS, 0), create
    assert create["per_s"] > 0 and 0 < create["latency_ms"]["p50"] <= create["latency_ms"]["p99"]

    listed = run["list"]
    assert listed["items"] == PODS and listed["pages"] == -(-PODS // 25), listed
    assert len(listed["runs_ms"]) == LISTS

    watch = run["watch"]
    assert watch["create_errors"] == 0 and "watch_error" not in watch, watch
    assert watch["events_delivered"] == watch["events_expected"] == WATCHERS * WATCH_PODS

    for phase in (create, watch):  # the samplers saw the processes they were given
        assert phase["cpu_s"]["apiserver"] > 0 and phase["cpu_s"]["storage"] > 0, phase
        assert phase["cpu_s"]["client"] > 0, phase
    assert run["sampled"]["storage_rss_mb"][0] > 10

    table = out_md.read_text()
    assert "| datastore | 1 |" in table, table
    # Every run's directory is removed and its processes stopped.
    assert not list(tmp_path.glob("bench-cp-*")), list(tmp_path.iterdir())
