"""Kubernetes JSON round trips, keys, requests and the scheduler's two writes."""

from __future__ import annotations

import json

import pytest
from kubernetes import client as k8s

from kvscheduler import objects as o


def test_keys() -> None:
    assert o.pod_key("default", "web-1") == "/registry/pods/default/web-1"
    assert o.node_key("n1") == "/registry/minions/n1"
    assert o.key_of(o.make_pod("p", namespace="kube-system")) == "/registry/pods/kube-system/p"
    assert o.key_of(o.make_node("n1")) == "/registry/minions/n1"


def test_pod_json_is_the_api_servers_shape() -> None:
    raw = o.encode(o.make_pod("p", "250m", "64Mi", node_selector={"disk": "ssd"},
                              tolerations=[("k", "Exists", "", "NoSchedule")]))
    d = json.loads(raw)
    assert d["apiVersion"] == "v1" and d["kind"] == "Pod"
    assert d["spec"]["schedulerName"] == "default-scheduler"
    assert d["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert d["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "250m", "memory": "64Mi"}
    assert "nodeName" not in d["spec"]  # no nulls, as the API server omits empty fields
    pod = o.decode_pod(raw)
    assert o.encode(pod) == raw
    assert o.pod_requests(pod) == o.Resources(250, 64 * 1024 ** 2)


def test_node_round_trip_and_readiness() -> None:
    raw = o.encode(o.make_node("n1", "8", "16Gi", labels={"zone": "a"}, taints=[("gpu", "", "NoSchedule")]))
    node = o.decode_node(raw)
    assert node.metadata.labels == {"kubernetes.io/hostname": "n1", "zone": "a"}
    assert node.spec.taints[0].key == "gpu"
    assert o.node_allocatable(node) == o.Resources(8000, 16 * 1024 ** 3)
    assert o.node_ready(node)
    assert not o.node_ready(o.make_node("n2", ready=False))
    assert o.from_dict(json.loads(raw)).metadata.name == "n1"


def test_from_dict_rejects_other_kinds() -> None:
    with pytest.raises(ValueError, match="only Pod and Node"):
        o.from_dict({"kind": "Service", "metadata": {"name": "x"}})


@pytest.mark.parametrize(("containers", "init", "want"), [
    ([("100m", "1Gi"), ("1", "512Mi")], [], (1100, 1536 * 1024 ** 2)),
    ([("100m", "1Gi")], [("2", "128Mi")], (2000, 1024 ** 3)),  # the biggest init container dominates cpu
    ([("0.5", "1G")], [], (500, 10 ** 9)),
    ([("1m", "1")], [], (1, 1)),
])
def test_pod_requests(containers: list[tuple[str, str]], init: list[tuple[str, str]],
                      want: tuple[int, int]) -> None:
    def c(cpu: str, mem: str) -> k8s.V1Container:
        reqs = k8s.V1ResourceRequirements(requests={"cpu": cpu, "memory": mem})
        return k8s.V1Container(name="c", resources=reqs)
    pod = o.make_pod("p")
    pod.spec.containers = [c(*x) for x in containers]
    pod.spec.init_containers = [c(*x) for x in init] or None
    assert o.pod_requests(pod) == o.Resources(*want)


def test_bound_and_unschedulable_conditions() -> None:
    pod = o.make_pod("p")
    u = o.unschedulable(pod, "0/1 nodes are available: 1 Insufficient cpu.")
    cond = o.pod_condition(u, "PodScheduled")
    assert (cond.status, cond.reason, cond.message) == ("False", "Unschedulable",
                                                        "0/1 nodes are available: 1 Insufficient cpu.")
    assert pod.status.conditions is None  # the input is not modified
    b = o.bound(o.decode_pod(o.encode(u)), "n1")
    assert b.spec.node_name == "n1"
    conds = b.status.conditions
    assert [(c.type, c.status) for c in conds] == [("PodScheduled", "True")]
    d = json.loads(o.encode(b))
    assert d["spec"]["nodeName"] == "n1"
    assert d["status"]["conditions"][0]["lastTransitionTime"].endswith("+00:00")


def test_scheduler_writes_keep_fields_the_models_do_not_know() -> None:
    # A newer API server's pod: fields unknown to this client's models, at the top of the
    # spec and inside another condition. Binding and marking unschedulable keep them.
    stored = json.loads(o.encode(o.make_pod("p")))
    stored["spec"]["futureField"] = {"x": 1}
    stored["status"]["conditions"] = [{"type": "Ready", "status": "False", "observedGeneration": 3}]
    stored["metadata"]["annotations"] = {"keep": "me"}
    raw = json.dumps(stored).encode()
    pod = o.decode_pod(raw)
    marked = json.loads(o.stored_with(raw, o.unschedulable(pod, "no room")))
    assert marked["spec"]["futureField"] == {"x": 1}
    assert [c["type"] for c in marked["status"]["conditions"]] == ["Ready", "PodScheduled"]
    assert marked["status"]["conditions"][0]["observedGeneration"] == 3
    new = o.bound(o.decode_pod(json.dumps(marked)), "n1")
    new.metadata.annotations = {**new.metadata.annotations, "by": "us"}
    b = json.loads(o.stored_with(json.dumps(marked).encode(), new))
    assert b["spec"]["nodeName"] == "n1" and b["spec"]["futureField"] == {"x": 1}
    assert b["metadata"]["annotations"] == {"keep": "me", "by": "us"}
    scheduled = [c for c in b["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert [c["status"] for c in scheduled] == ["True"]
    assert b["status"]["conditions"][0] == {"type": "Ready", "status": "False", "observedGeneration": 3}
