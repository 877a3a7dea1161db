"""The scheduling decision, pure: filter plugins, a score, and kube-scheduler's messages.

No I/O and no clock: a decision is a function of the pod and a snapshot of the nodes with
what is already placed on them (bound pods plus the ones assumed while their bind is in
flight), so it is unit-tested with plain tables.

Filters run in kube-scheduler's order and a node is rejected by the first one that fails
(``NodeResourcesFit`` may give two reasons at once: cpu and memory). Reasons use
kube-scheduler's wording so the unschedulable message reads the same:
``0/20 nodes are available: 3 Insufficient cpu, 17 node(s) didn't match Pod's node
affinity/selector.``

kube-scheduler has no readiness filter: the node lifecycle controller taints a node whose
Ready condition is False with ``node.kubernetes.io/not-ready:NoSchedule`` (Unknown or
absent: ``node.kubernetes.io/unreachable:NoSchedule``), and TaintToleration rejects it like
any other untolerated taint. There is no such controller here, so the taint is implied
from the condition, which gives the same decision and the same message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from kubernetes import client as k8s

from kvscheduler.objects import ZERO, Resources, node_allocatable, node_ready_status, pod_requests

UNSCHEDULABLE = "node(s) were unschedulable"
SELECTOR_MISMATCH = "node(s) didn't match Pod's node affinity/selector"
INSUFFICIENT_CPU = "Insufficient cpu"
INSUFFICIENT_MEMORY = "Insufficient memory"
TOO_MANY_PODS = "Too many pods"
UNTOLERATED_TAINT = "node(s) had untolerated taint(s)"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
MAX_NODE_SCORE = 100
# kube-scheduler scores a pod without requests as if it asked for this much (it still fits
# anywhere), so such pods spread instead of piling onto one node.
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 1024 * 1024


@dataclass
class NodeInfo:
    """A node and what is placed on it (bound plus assumed pods)."""

    node: k8s.V1Node
    requested: Resources = ZERO
    pods: int = 0
    # The same sums with kube-scheduler's non-zero defaults, used only for scoring.
    nonzero: Resources = ZERO
    allocatable: Resources = field(init=False)
    max_pods: int = field(init=False)

    def __post_init__(self) -> None:
        self.allocatable = node_allocatable(self.node)
        st = self.node.status
        alloc = (st.allocatable or st.capacity or {}) if st else {}
        self.max_pods = int(alloc.get("pods", 110))

    @property
    def name(self) -> str:
        return str(self.node.metadata.name)

    def add(self, req: Resources) -> None:
        self.requested += req
        self.nonzero += nonzero(req)
        self.pods += 1

    def remove(self, req: Resources) -> None:
        self.requested -= req
        self.nonzero -= nonzero(req)
        self.pods -= 1


def nonzero(req: Resources) -> Resources:
    return Resources(req.milli_cpu or DEFAULT_MILLI_CPU, req.memory or DEFAULT_MEMORY)


# -- filter plugins: each returns the reasons a node is rejected (empty: it passes) --------------

def tolerates(tol: k8s.V1Toleration, taint: k8s.V1Taint) -> bool:
    """Toleration semantics of k8s.io/api core/v1 ToleratesTaint."""
    if tol.effect and tol.effect != taint.effect:
        return False
    if tol.key and tol.key != taint.key:
        return False
    op = tol.operator or "Equal"
    if op == "Exists":
        return True  # an empty key with Exists matches every taint
    return op == "Equal" and (tol.value or "") == (taint.value or "")


def _tolerated(pod: k8s.V1Pod, taint: k8s.V1Taint) -> bool:
    return any(tolerates(t, taint) for t in pod.spec.tolerations or [])


def filter_unschedulable(pod: k8s.V1Pod, ni: NodeInfo, req: Resources) -> list[str]:
    if not (ni.node.spec and ni.node.spec.unschedulable):
        return []
    # As kube-scheduler's NodeUnschedulable plugin: a pod tolerating the cordon taint may go.
    cordon = k8s.V1Taint(key=UNSCHEDULABLE_TAINT, effect="NoSchedule")
    return [] if _tolerated(pod, cordon) else [UNSCHEDULABLE]


def node_taints(node: k8s.V1Node) -> list[k8s.V1Taint]:
    """The node's taints plus the NoSchedule taint its Ready condition implies (what the node
    lifecycle controller would add), unless the node already carries that key."""
    taints = list((node.spec.taints if node.spec else None) or [])
    ready = node_ready_status(node)
    implied = None if ready == "True" else NOT_READY_TAINT if ready == "False" else UNREACHABLE_TAINT
    if implied and not any(t.key == implied for t in taints):
        taints.append(k8s.V1Taint(key=implied, effect="NoSchedule"))
    return taints


def filter_taints(pod: k8s.V1Pod, ni: NodeInfo, req: Resources) -> list[str]:
    # kube-scheduler 1.37's TaintToleration names no taint in its reason (the taint is only logged).
    for taint in node_taints(ni.node):
        if taint.effect in ("NoSchedule", "NoExecute") and not _tolerated(pod, taint):
            return [UNTOLERATED_TAINT]
    return []


def filter_node_selector(pod: k8s.V1Pod, ni: NodeInfo, req: Resources) -> list[str]:
    labels = ni.node.metadata.labels or {}
    sel = pod.spec.node_selector or {}
    return [] if all(labels.get(k) == v for k, v in sel.items()) else [SELECTOR_MISMATCH]


def filter_resources(pod: k8s.V1Pod, ni: NodeInfo, req: Resources) -> list[str]:
    reasons = []
    if ni.pods + 1 > ni.max_pods:
        reasons.append(TOO_MANY_PODS)
    free = ni.allocatable - ni.requested
    if req.milli_cpu > free.milli_cpu:
        reasons.append(INSUFFICIENT_CPU)
    if req.memory > free.memory:
        reasons.append(INSUFFICIENT_MEMORY)
    return reasons


Filter = Callable[[k8s.V1Pod, NodeInfo, Resources], list[str]]
# kube-scheduler's default order: NodeUnschedulable, TaintToleration, NodeAffinity, NodeResourcesFit.
FILTERS: tuple[Filter, ...] = (filter_unschedulable, filter_taints, filter_node_selector, filter_resources)


def least_allocated(ni: NodeInfo, req: Resources) -> int:
    """kube-scheduler's LeastAllocated: mean over cpu and memory of the free share after
    placing the pod, 0..100 (integer arithmetic as upstream, so near-equal nodes tie)."""
    want = ni.nonzero + nonzero(req)
    scores = []
    for cap, used in ((ni.allocatable.milli_cpu, want.milli_cpu), (ni.allocatable.memory, want.memory)):
        scores.append(0 if cap <= 0 or used > cap else (cap - used) * MAX_NODE_SCORE // cap)
    return sum(scores) // len(scores)


# -- the decision ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """Where a pod goes (node) or why it cannot go anywhere (message, per-reason counts)."""

    node: str | None
    score: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    total_nodes: int = 0

    @property
    def message(self) -> str:
        return fit_error_message(self.total_nodes, self.reasons)


def fit_error_message(total_nodes: int, reasons: dict[str, int]) -> str:
    """kube-scheduler's FitError text: counts per reason, sorted as strings."""
    if total_nodes == 0:
        return "no nodes available to schedule pods"
    parts = sorted(f"{n} {r}" for r, n in reasons.items())
    return f"0/{total_nodes} nodes are available: {', '.join(parts)}."


def feasible(pod: k8s.V1Pod, nodes: Iterable[NodeInfo], req: Resources | None = None,
             filters: Sequence[Filter] = FILTERS) -> tuple[list[NodeInfo], Counter[str]]:
    """The nodes that pass every filter, and a histogram of why the others did not."""
    req = pod_requests(pod) if req is None else req
    ok: list[NodeInfo] = []
    why: Counter[str] = Counter()
    for ni in nodes:
        for f in filters:
            reasons = f(pod, ni, req)
            if reasons:
                why.update(reasons)
                break
        else:
            ok.append(ni)
    return ok, why


def schedule(pod: k8s.V1Pod, nodes: Sequence[NodeInfo], filters: Sequence[Filter] = FILTERS) -> Decision:
    """Filter, then pick the highest least-allocated score; ties go to the smallest node name
    (stable, so the same inputs always give the same node)."""
    req = pod_requests(pod)
    ok, why = feasible(pod, nodes, req, filters)
    if not ok:
        return Decision(None, reasons=dict(why), total_nodes=len(nodes))
    best = min(ok, key=lambda ni: (-least_allocated(ni, req), ni.name))
    return Decision(best.name, score=least_allocated(best, req), total_nodes=len(nodes))
