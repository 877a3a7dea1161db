"""kvctl's pure parts: manifests, the fields the API server fills in, kubectl-like tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kvscheduler import objects as obj
from kvscheduler.kvctl import (
    POD_HEADER,
    age,
    format_table,
    load_manifests,
    node_row,
    pod_row,
    pod_status,
    prepare_for_create,
)

MANIFESTS = """
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {zone: a}}
spec: {taints: [{key: dedicated, value: gpu, effect: NoSchedule}]}
status:
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: web}
  spec:
    containers: [{name: c, image: nginx, resources: {requests: {cpu: 250m, memory: 64Mi}}}]
- apiVersion: v1
  kind: Pod
  metadata: {name: batch, namespace: jobs}
  spec:
    schedulerName: other
    containers: [{name: c, image: busybox}]
"""


def test_load_and_prepare() -> None:
    node, web, batch = load_manifests(MANIFESTS)
    assert obj.key_of(node) == "/registry/minions/n1"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    prepare_for_create(web, now)
    prepare_for_create(batch, now)
    assert obj.key_of(web) == "/registry/pods/default/web"
    assert web.spec.scheduler_name == "default-scheduler" and batch.spec.scheduler_name == "other"
    assert web.status.phase == "Pending" and web.metadata.uid and web.metadata.creation_timestamp == now
    assert obj.pod_requests(web) == obj.Resources(250, 64 * 1024 * 1024)


def test_load_rejects_other_kinds() -> None:
    with pytest.raises(ValueError, match="unsupported kind 'Service'"):
        load_manifests("kind: Service\nmetadata: {name: s}\n")


@pytest.mark.parametrize(("secs", "want"), [(5, "5s"), (61, "1m"), (7200, "2h"), (3 * 86400 + 5, "3d")])
def test_age(secs: int, want: str) -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert age(now - timedelta(seconds=secs), now) == want


def test_rows_and_table() -> None:
    now = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    pod = prepare_for_create(obj.make_pod("web"), now - timedelta(seconds=30))
    assert pod_status(pod) == "Pending"
    assert pod_status(obj.unschedulable(pod, "no")) == "Unschedulable"
    b = obj.bound(pod, "n1")
    assert pod_status(b) == "Scheduled"
    assert pod_row(b, False, now) == ["web", "Scheduled", "n1", "100m", "128Mi", "30s"]
    assert pod_row(b, True, now)[0] == "default"
    node = prepare_for_create(obj.make_node("n1", labels={"zone": "a"}, taints=[("gpu", "", "NoSchedule")],
                                            unschedulable=True), now)
    assert node_row(node, now) == ["n1", "Ready,SchedulingDisabled", "4000m", "8192Mi", "zone=a",
                                   "gpu:NoSchedule", "0s"]
    table = format_table(POD_HEADER, [pod_row(b, False, now)])
    assert table.splitlines() == ["NAME   STATUS      NODE   CPU    MEMORY   AGE",
                                  "web    Scheduled   n1     100m   128Mi    30s"]
