"""Kubernetes's own storage tests (k8s.io/apiserver v0.37.2: etcd3, cacher, generic
registry) against the datastore: no failures except the runner's EXCLUSIONS.

The suites are built by ``python3 scripts/build_refs.py storagetests`` (Go; cached outside
the checkout) and run by scripts/storage_tests.py, one pytest test per suite so CI can
split them. See docs/kubernetes-storage-tests.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from datastore.testing import refs

ROOT = Path(__file__).resolve().parents[1]
SUITE_BUDGET_S = 1200  # each suite takes 1.5-3 minutes on a loaded 2-core machine


@pytest.mark.timeout(SUITE_BUDGET_S + 60)
@pytest.mark.parametrize("suite", ["etcd3", "cacher", "registry"])
def test_kubernetes_storage_suite(suite: str, tmp_path: Path) -> None:
    refs.binary(f"{suite}.test")  # fails saying how to build the suites when they are missing
    out = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "storage_tests.py"), "--backend", "datastore",
         "--suite", suite, "--json", str(out), "--log-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=SUITE_BUDGET_S)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    assert out.exists(), f"the runner did not finish: {proc.stderr[-2000:]}"
    s = json.loads(out.read_text())["datastore"][suite]
    assert s["passed"] > 50, f"suspiciously few tests ran: {s}"
    assert not s["failures"] and not s["timed_out"], (
        f"{suite}: {s['failed']} failed, timed out {s['timed_out']}: {s['failures']} "
        f"(log {(tmp_path / f'datastore-{suite}.log')})")
