"""A real control plane (kube-apiserver, controller-manager, scheduler, kwok) over real
datastore members, for e2e tests; kubectl and the API driven as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datastore.kube import controlplane
from datastore.kube.controlplane import ControlPlane
from datastore.testing import refs


def up(directory: Path, members: int = 1, backend: str = "datastore",
       nodes: int = 3, compaction_interval: str = "1m", agent_nodes: int = 0,
       storage_media_type: str = "protobuf", restore_from: Path | None = None,
       extra_apiserver_args: tuple[str, ...] = ()) -> ControlPlane:
    """``datastore kube up`` in-process; the API server panics on a cache inconsistency."""
    os.environ["KUBE_WATCHCACHE_CONSISTENCY_CHECKER"] = "true"  # inherited by kube-apiserver
    opts = controlplane.Options(directory, backend=backend, members=members, nodes=nodes,
                                compaction_interval=compaction_interval, timeout=300,
                                agent_nodes=agent_nodes, storage_media_type=storage_media_type,
                                restore_from=restore_from,
                                extra_apiserver_args=list(extra_apiserver_args))
    return controlplane.up(opts, log=lambda line: print(line, flush=True))


@contextmanager
def running(directory: Path, **options: Any) -> Iterator[ControlPlane]:
    """``up(directory, **options)`` for the length of a ``with``; ``down`` afterwards."""
    cp = up(directory, **options)
    try:
        yield cp
    finally:
        controlplane.down(directory)


def kubectl(cp: ControlPlane, *args: str, input: str | None = None,  # noqa: A002
            check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
    proc = subprocess.run([str(refs.binary("kubectl")), *args], input=input, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def kjson(cp: ControlPlane, *args: str) -> Any:
    return json.loads(kubectl(cp, *args, "-o", "json").stdout)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)  # poll interval of the condition above
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def metric_values(cp: ControlPlane, name: str) -> dict[str, float]:
    """The API server's samples of one metric family: {label text: value}."""
    status, text = cp.api().get("/metrics")
    assert status == 200, text
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def in_cluster(cp: ControlPlane, *argv: str, timeout: float = 60,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """``datastore kube shell -- ARGV``: a command that resolves the pods' and Services'
    names as a pod does."""
    proc = subprocess.run([sys.executable, "-m", "datastore", "kube", "shell", "--dir",
                           str(cp.directory), "--", *argv], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def pods(cp: ControlPlane, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    args = ["-n", namespace, "get", "pods"] + (["-l", selector] if selector else [])
    return sorted(kjson(cp, *args)["items"], key=lambda p: p["metadata"]["name"])


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def wait_pods_ready(cp: ControlPlane, namespace: str, selector: str, count: int,
                    timeout: float = 180) -> list[dict[str, Any]]:
    """Exactly ``count`` pods match, none terminating, all Ready."""
    def check() -> list[dict[str, Any]] | None:
        ps = [p for p in pods(cp, namespace, selector) if not p["metadata"].get("deletionTimestamp")]
        return ps if len(ps) == count and all(ready(p) for p in ps) else None
    return wait_for(check, timeout, f"{count} ready pod(s) {selector} in {namespace}")  # type: ignore[no-any-return]
