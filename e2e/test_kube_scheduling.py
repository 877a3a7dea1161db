"""kvscheduler next to the real kube-scheduler, on one control plane and the same nodes.

The API server stores objects as JSON (``kube up --storage-media-type json``), so
kvscheduler reads the pods and nodes it serves where the API server keeps them and binds
with its fenced Txn on the datastore; the API server sees each bind through its watch.
Pods are created with ``kubectl apply``: those with ``schedulerName: kvscheduler`` are
kvscheduler's, the others kube-scheduler's. The nodes are kwok's (no processes needed).
The verdict is read from the API: a watch of every pod from before the first one was
created must show each bound once and never moved, and no node over its allocatable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from kube_util import kjson, kubectl, running, wait_for

from datastore.kube.controlplane import FAKE_NODE_ANNOTATION, ControlPlane
from kvscheduler.scheduler import SCHEDULED_BY

NS = "sched"
NODES = 4
NODE_CPU = 4
QUANT = {"m": Decimal("0.001"), "": Decimal(1)}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running(tmp_path_factory.mktemp("kube-sched"), nodes=0,
                 storage_media_type="json") as plane:
        yield plane


def cpu(q: str) -> Decimal:
    return Decimal(q[:-1]) * QUANT["m"] if q.endswith("m") else Decimal(q)


class PodHistory(threading.Thread):
    """Every pod's nodeName over time, from a watch of all pods."""

    def __init__(self, cp: ControlPlane, resource_version: str) -> None:
        super().__init__(daemon=True)
        self.cp, self.rv = cp, resource_version
        self.binds: dict[str, list[str]] = {}  # pod → every distinct nodeName seen, in order
        self.proc: subprocess.Popen[str] | None = None

    def run(self) -> None:
        from datastore.testing import refs

        self.proc = subprocess.Popen(
            [str(refs.binary("kubectl")), f"--kubeconfig={self.cp.kubeconfig}", "get", "--raw",
             f"/api/v1/namespaces/{NS}/pods?watch=1&resourceVersion={self.rv}"],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = json.loads(line)
            pod = ev["object"]
            node = pod["spec"].get("nodeName")
            seen = self.binds.setdefault(pod["metadata"]["name"], [])
            if node and (not seen or seen[-1] != node):
                seen.append(node)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def node_manifest(i: int) -> dict[str, Any]:
    cap = {"cpu": str(NODE_CPU), "memory": "16Gi", "pods": "110"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"small-{i}", "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                         "labels": {"type": "kwok", "kubernetes.io/hostname": f"small-{i}"}},
            "status": {"allocatable": cap, "capacity": cap}}


def pod_manifest(name: str, request: str, scheduler: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                            "resources": {"requests": {"cpu": request, "memory": "64Mi"}}}],
                            "terminationGracePeriodSeconds": 0}
    if scheduler:
        spec["schedulerName"] = scheduler
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def apply(cp: ControlPlane, objs: list[dict[str, Any]]) -> None:
    kubectl(cp, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


def settled(cp: ControlPlane, names: set[str]) -> list[dict[str, Any]] | None:
    """Every pod in ``names`` bound, or refused by its scheduler with PodScheduled=False."""
    items = [p for p in kjson(cp, "-n", NS, "get", "pods")["items"] if p["metadata"]["name"] in names]
    if len(items) != len(names):
        return None
    for p in items:
        cond = {c["type"]: c for c in p["status"].get("conditions") or []}.get("PodScheduled")
        if not p["spec"].get("nodeName") and not (cond and cond["status"] == "False"):
            return None
    return items


def check_allocatable(cp: ControlPlane) -> dict[str, Decimal]:
    used: dict[str, Decimal] = {}
    for p in kjson(cp, "-n", NS, "get", "pods")["items"]:
        node = p["spec"].get("nodeName")
        if node:
            used[node] = used.get(node, Decimal(0)) + sum(
                cpu(c["resources"]["requests"]["cpu"]) for c in p["spec"]["containers"])
    for node, total in used.items():
        assert total <= NODE_CPU, f"{node} holds {total} CPU, allocatable {NODE_CPU}"
    return used


def test_kvscheduler_and_kube_scheduler_share_the_nodes(cp: ControlPlane) -> None:
    kubectl(cp, "create", "namespace", NS)
    # pods are refused until the service-account controller made the namespace's "default"
    wait_for(lambda: kubectl(cp, "-n", NS, "get", "serviceaccount", "default", check=False).returncode == 0,
             60, "the namespace's default service account")
    apply(cp, [node_manifest(i) for i in range(NODES)])
    wait_for(lambda: all(any(c["type"] == "Ready" and c["status"] == "True"
                             for c in n["status"].get("conditions") or [])
                         for n in kjson(cp, "get", "nodes")["items"]) and
             len(kjson(cp, "get", "nodes")["items"]) == NODES, 60, "the nodes Ready")
    _, body = cp.api().get(f"/api/v1/namespaces/{NS}/pods")
    history = PodHistory(cp, body["metadata"]["resourceVersion"])
    history.start()
    with open(cp.directory / "logs" / "kvscheduler.log", "w") as log:
        sched = subprocess.Popen([sys.executable, "-m", "kvscheduler", "run", "--endpoints",
                                  ",".join(e.removeprefix("http://") for e in cp.endpoints),
                                  "--scheduler-name", "kvscheduler", "--lease-ttl", "5"],
                                 stdout=subprocess.DEVNULL, stderr=log)
    try:
        # 1. both at once, room for all: 12 x 500m each (12 CPU of 16)
        first = [pod_manifest(f"kv-{i}", "500m", "kvscheduler") for i in range(12)]
        first += [pod_manifest(f"default-{i}", "500m", None) for i in range(12)]
        apply(cp, first)
        names = {p["metadata"]["name"] for p in first}
        items = wait_for(lambda: settled(cp, names), 120, "the first pods placed")
        assert all(p["spec"].get("nodeName") for p in items), "room for all, yet some not bound"
        for p in items:
            ours = p["metadata"]["name"].startswith("kv-")
            assert (SCHEDULED_BY in (p["metadata"].get("annotations") or {})) == ours, p["metadata"]
        wide = kubectl(cp, "-n", NS, "get", "pods", "-o", "wide").stdout
        rows = {line.split()[0]: line.split() for line in wide.splitlines()[1:]}
        assert all(rows[f"kv-{i}"][6].startswith("small-") for i in range(12)), wide
        # kwok runs what either bound
        wait_for(lambda: all(p["status"].get("phase") == "Running" for p in
                             kjson(cp, "-n", NS, "get", "pods")["items"]), 60, "the pods Running")
        check_allocatable(cp)

        # 2. contention: 4 CPU left; kvscheduler's 1-CPU pods must count kube-scheduler's
        more = [pod_manifest(f"kv-big-{i}", "1", "kvscheduler") for i in range(4)]
        more += [pod_manifest(f"kv-huge-{i}", "3", "kvscheduler") for i in range(2)]
        apply(cp, more)
        items = wait_for(lambda: settled(cp, {p["metadata"]["name"] for p in more}), 120,
                         "kvscheduler's second pods decided")
        refused = [p for p in items if not p["spec"].get("nodeName")]
        assert refused, "more asked for than there was room for, yet every pod bound"
        for p in refused:
            cond = next(c for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
            assert cond["reason"] == "Unschedulable" and "Insufficient cpu" in cond["message"], cond
        # and kube-scheduler must count kvscheduler's binds
        last = [pod_manifest(f"default-big-{i}", "1", None) for i in range(4)]
        apply(cp, last)
        wait_for(lambda: settled(cp, {p["metadata"]["name"] for p in last}), 120,
                 "kube-scheduler's last pods decided")
        used = check_allocatable(cp)
        assert sum(used.values()) <= NODES * NODE_CPU
    finally:
        sched.terminate()
        sched.wait(30)
        history.stop()
    # no pod ever bound twice or moved
    moved = {name: nodes for name, nodes in history.binds.items() if len(nodes) > 1}
    assert not moved, moved
    assert len(history.binds) == 24 + 6 + 4


def test_kvscheduler_demo_on_the_control_plane(cp: ControlPlane) -> None:
    eps = ",".join(e.removeprefix("http://") for e in cp.endpoints)
    out = subprocess.run([sys.executable, "-m", "kvscheduler", "demo", "--endpoints", eps, "--pods", "20",
                          "--scheduler-name", "kvscheduler"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    # the API server serves what the demo wrote and kvscheduler bound
    demo = {p["metadata"]["name"]: p for p in kjson(cp, "-n", "demo", "get", "pods")["items"]}
    assert len(demo) == 20 + 10, sorted(demo)
    unbound = sorted(n for n, p in demo.items() if not p["spec"].get("nodeName"))
    # the three that fit nowhere: too big, a zone no node has, a GPU pod without toleration
    assert unbound == ["gpu-no-toleration-0", "huge-0", "zone-c-0"], unbound
    nodes = {n["metadata"]["name"] for n in kjson(cp, "get", "nodes")["items"]}
    assert {p["spec"]["nodeName"] for p in demo.values() if p["spec"].get("nodeName")} <= nodes
    wide = kubectl(cp, "-n", "demo", "get", "pods", "-o", "wide").stdout
    assert "web-0" in wide and demo["web-0"]["spec"]["nodeName"] in wide
