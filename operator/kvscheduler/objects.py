"""Pods and Nodes as the Kubernetes API server stores them in etcd.

Objects are the ``kubernetes`` package's models (``V1Pod``, ``V1Node``) serialized to the
API server's JSON (camelCase field names, ``apiVersion``/``kind`` set) and kept under
kube-apiserver's keys: ``/registry/pods/<namespace>/<name>`` and ``/registry/minions/<name>``
(nodes were once called minions, and the storage prefix kept the name).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from kubernetes import client as k8s
from kubernetes.client import ApiClient
from kubernetes.utils import parse_quantity

POD_PREFIX = "/registry/pods/"
NODE_PREFIX = "/registry/minions/"
DEFAULT_SCHEDULER = "default-scheduler"
DEFAULT_NAMESPACE = "default"

_api = ApiClient()  # only its (de)serializers are used; it never opens a connection


def pod_key(namespace: str, name: str) -> str:
    return f"{POD_PREFIX}{namespace}/{name}"


def node_key(name: str) -> str:
    return f"{NODE_PREFIX}{name}"


def key_of(obj: k8s.V1Pod | k8s.V1Node) -> str:
    """The registry key an object is stored under."""
    if isinstance(obj, k8s.V1Node):
        return node_key(obj.metadata.name)
    return pod_key(obj.metadata.namespace or DEFAULT_NAMESPACE, obj.metadata.name)


def to_dict(obj: Any) -> dict[str, Any]:
    """The API server's JSON form of a model (camelCase keys, no nulls)."""
    d: dict[str, Any] = _api.sanitize_for_serialization(obj)
    return d


def encode(obj: k8s.V1Pod | k8s.V1Node) -> bytes:
    d = to_dict(obj)
    d.setdefault("apiVersion", "v1")
    d.setdefault("kind", "Node" if isinstance(obj, k8s.V1Node) else "Pod")
    return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()


def from_dict(d: dict[str, Any]) -> k8s.V1Pod | k8s.V1Node:
    """A model from a manifest or stored dict; ``kind`` picks Pod or Node."""
    kind = d.get("kind")
    if kind not in ("Pod", "Node"):
        raise ValueError(f"unsupported kind {kind!r}: only Pod and Node objects are stored here")
    return _api.deserialize(json.dumps(d), f"V1{kind}", "application/json")  # type: ignore[no-any-return]


def decode_pod(data: bytes | str) -> k8s.V1Pod:
    return _api.deserialize(data, "V1Pod", "application/json")  # type: ignore[no-any-return]


def decode_node(data: bytes | str) -> k8s.V1Node:
    return _api.deserialize(data, "V1Node", "application/json")  # type: ignore[no-any-return]


# -- construction ------------------------------------------------------------------------------

def make_node(name: str, cpu: str = "4", memory: str = "8Gi", *, labels: dict[str, str] | None = None,
              taints: Sequence[tuple[str, str, str]] = (), ready: bool = True,
              unschedulable: bool = False, pods: str = "110") -> k8s.V1Node:
    """A Node with the given allocatable resources; taints as (key, value, effect)."""
    return k8s.V1Node(
        api_version="v1", kind="Node",
        metadata=k8s.V1ObjectMeta(name=name, labels={"kubernetes.io/hostname": name, **(labels or {})}),
        spec=k8s.V1NodeSpec(
            unschedulable=unschedulable or None,
            taints=[k8s.V1Taint(key=k, value=v or None, effect=e) for k, v, e in taints] or None),
        status=k8s.V1NodeStatus(
            capacity={"cpu": cpu, "memory": memory, "pods": pods},
            allocatable={"cpu": cpu, "memory": memory, "pods": pods},
            conditions=[k8s.V1NodeCondition(type="Ready", status="True" if ready else "False",
                                            reason="KubeletReady" if ready else "KubeletNotReady")]))


def make_pod(name: str, cpu: str = "100m", memory: str = "128Mi", *, namespace: str = DEFAULT_NAMESPACE,
             node_selector: dict[str, str] | None = None,
             tolerations: Sequence[tuple[str, str, str, str]] = (),
             scheduler_name: str = DEFAULT_SCHEDULER, labels: dict[str, str] | None = None) -> k8s.V1Pod:
    """A pending Pod with one container; tolerations as (key, operator, value, effect)."""
    return k8s.V1Pod(
        api_version="v1", kind="Pod",
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=k8s.V1PodSpec(
            scheduler_name=scheduler_name,
            node_selector=node_selector or None,
            tolerations=[k8s.V1Toleration(key=k or None, operator=op, value=v or None, effect=e or None)
                         for k, op, v, e in tolerations] or None,
            containers=[k8s.V1Container(
                name="app", image="registry.k8s.io/pause:3.9",
                resources=k8s.V1ResourceRequirements(requests={"cpu": cpu, "memory": memory}))]),
        status=k8s.V1PodStatus(phase="Pending"))


# -- reading -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resources:
    """CPU in millicores and memory in bytes (the units kube-scheduler compares in)."""

    milli_cpu: int = 0
    memory: int = 0

    def __add__(self, o: Resources) -> Resources:
        return Resources(self.milli_cpu + o.milli_cpu, self.memory + o.memory)

    def __sub__(self, o: Resources) -> Resources:
        return Resources(self.milli_cpu - o.milli_cpu, self.memory - o.memory)


ZERO = Resources()


def _milli(q: Any) -> int:
    return int((parse_quantity(q) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def _bytes(q: Any) -> int:
    return int(Decimal(parse_quantity(q)).to_integral_value(rounding="ROUND_CEILING"))


def resources_of(rl: dict[str, Any] | None) -> Resources:
    rl = rl or {}
    return Resources(_milli(rl["cpu"]) if "cpu" in rl else 0, _bytes(rl["memory"]) if "memory" in rl else 0)


def pod_requests(pod: k8s.V1Pod) -> Resources:
    """Effective requests as kube-scheduler computes them: the sum over containers, or the
    largest init container if that is more (init containers run one at a time, before)."""
    spec = pod.spec
    total = Resources()
    for c in spec.containers or []:
        total += resources_of(c.resources.requests if c.resources else None)
    for c in spec.init_containers or []:
        r = resources_of(c.resources.requests if c.resources else None)
        total = Resources(max(total.milli_cpu, r.milli_cpu), max(total.memory, r.memory))
    if spec.overhead:
        total += resources_of(spec.overhead)
    return total


def node_allocatable(node: k8s.V1Node) -> Resources:
    st = node.status
    return resources_of((st.allocatable or st.capacity) if st else None)


def node_ready_status(node: k8s.V1Node) -> str:
    """The Ready condition's status: "True", "False", or "Unknown" (also when absent)."""
    for c in (node.status.conditions if node.status else None) or []:
        if c.type == "Ready":
            return str(c.status)
    return "Unknown"


def node_ready(node: k8s.V1Node) -> bool:
    return node_ready_status(node) == "True"


def scheduler_name(pod: k8s.V1Pod) -> str:
    return pod.spec.scheduler_name or DEFAULT_SCHEDULER


def is_terminal(pod: k8s.V1Pod) -> bool:
    """Succeeded/Failed pods no longer hold their node's resources."""
    return bool(pod.status and pod.status.phase in ("Succeeded", "Failed"))


def pod_condition(pod: k8s.V1Pod, type_: str) -> k8s.V1PodCondition | None:
    for c in (pod.status.conditions if pod.status else None) or []:
        if c.type == type_:
            return c
    return None


# -- the scheduler's writes --------------------------------------------------------------------

def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _with_condition(pod: k8s.V1Pod, cond: k8s.V1PodCondition) -> k8s.V1Pod:
    new = copy.deepcopy(pod)
    if new.status is None:
        new.status = k8s.V1PodStatus(phase="Pending")
    old = pod_condition(new, cond.type)
    if old is not None and old.status == cond.status:
        cond.last_transition_time = old.last_transition_time  # only a status flip is a transition
    new.status.conditions = [c for c in new.status.conditions or [] if c.type != cond.type] + [cond]
    return new


def bound(pod: k8s.V1Pod, node_name: str) -> k8s.V1Pod:
    """The pod as the binding subresource leaves it: nodeName set, PodScheduled=True."""
    new = _with_condition(pod, k8s.V1PodCondition(type="PodScheduled", status="True",
                                                  last_transition_time=_now()))
    new.spec.node_name = node_name
    return new


def stored_with(raw: bytes, new: k8s.V1Pod) -> bytes:
    """The stored pod ``raw`` with only what the scheduler writes taken from ``new``:
    ``spec.nodeName``, ``metadata.annotations`` and the ``PodScheduled`` condition.

    Everything else stays byte-for-byte as its writer left it, including fields this
    client's models do not know (a newer API server's), which a decode/encode would drop.
    """
    d = json.loads(raw)
    n = to_dict(new)
    node = n.get("spec", {}).get("nodeName")
    if node:
        d.setdefault("spec", {})["nodeName"] = node
    annotations = n.get("metadata", {}).get("annotations")
    if annotations:
        d.setdefault("metadata", {})["annotations"] = annotations
    mine = [c for c in n.get("status", {}).get("conditions", []) if c.get("type") == "PodScheduled"]
    if mine:
        status = d.setdefault("status", {})
        status.setdefault("phase", "Pending")
        status["conditions"] = [c for c in status.get("conditions") or []
                                if c.get("type") != "PodScheduled"] + mine
    return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()


def unschedulable(pod: k8s.V1Pod, message: str) -> k8s.V1Pod:
    """The pod with PodScheduled=False, reason Unschedulable, and why."""
    cond = k8s.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable", message=message,
                              last_transition_time=_now())
    return _with_condition(pod, cond)
