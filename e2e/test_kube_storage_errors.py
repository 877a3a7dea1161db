"""Storage errors reach kubectl as etcd's would: the same HTTP status and message through
a real kube-apiserver, on the datastore and on etcd 3.6 side by side."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kube_util import kubectl, running, wait_for


def _create_without_quorum(directory: Path, backend: str) -> tuple[int, str, float]:
    """Three members, two killed: (kubectl's exit code, its error line, seconds taken)."""
    with running(directory, members=3, backend=backend, nodes=0) as cp:
        kubectl(cp, "create", "configmap", "with-quorum")
        prefix = "ds" if backend == "datastore" else "etcd"
        killed = [cp.daemon(f"{prefix}{i}") for i in (1, 2)]
        for daemon in killed:
            os.kill(daemon.pid, signal.SIGKILL)  # connections refused, not hung
        # A process blocked in fsync takes SIGKILL only when the disk answers; until it has
        # exited its sockets stay open, and a create sent there is lost to a reset.
        wait_for(lambda: not any(d.alive() for d in killed), 60, "the killed members to exit")
        t0 = time.monotonic()
        out = kubectl(cp, "create", "configmap", "without-quorum", "-v=6", check=False,
                      timeout=120)
        took = time.monotonic() - t0
        status = next((line.split('status="')[1].split('"')[0] for line in out.stderr.splitlines()
                       if '"Response"' in line and 'verb="POST"' in line), "")
        error = next(line for line in out.stderr.splitlines() if line.startswith("error:"))
        return out.returncode, f"{status}: {error}", took


def test_lost_quorum_is_a_500_like_etcds(tmp_path: Path) -> None:
    ours = _create_without_quorum(tmp_path / "ours", "datastore")
    etcd = _create_without_quorum(tmp_path / "etcd", "etcd")
    # etcd 3.6 answers "etcdserver: request timed out" after its request timeout
    # (5 s + 2 election timeouts), which the API server passes on as a 500.
    assert etcd[:2] == (1, "500 Internal Server Error: error: failed to create configmap: "
                           "etcdserver: request timed out"), etcd
    assert ours[:2] == etcd[:2], (ours, etcd)
    assert ours[2] < etcd[2] + 15, (ours, etcd)
