"""Filter plugins, the least-allocated score and kube-scheduler's unschedulable message."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from kvscheduler.algorithm import (
    INSUFFICIENT_CPU,
    INSUFFICIENT_MEMORY,
    SELECTOR_MISMATCH,
    TOO_MANY_PODS,
    UNSCHEDULABLE,
    NodeInfo,
    feasible,
    fit_error_message,
    least_allocated,
    node_taints,
    schedule,
    tolerates,
)
from kvscheduler.objects import Resources, make_node, make_pod

GI = 1024 ** 3


def ni(name: str, cpu: str = "4", mem: str = "8Gi", used: tuple[int, int] = (0, 0), placed: int = 0,
       **kw: object) -> NodeInfo:
    n = NodeInfo(make_node(name, cpu, mem, **kw))  # type: ignore[arg-type]
    n.requested = Resources(*used)
    n.nonzero = Resources(*used)
    n.pods = placed
    return n


TAINT = [("dedicated", "gpu", "NoSchedule")]
# kube-scheduler 1.37's words (pkg/scheduler/framework/plugins/tainttoleration): the reason
# names no taint. Literal here, so a change to the constant is caught.
TAINTED = "node(s) had untolerated taint(s)"
NOT_READY_TOL = ("node.kubernetes.io/not-ready", "Exists", "", "NoSchedule")

FILTER_CASES = [
    # (case, node kwargs, pod kwargs, expected reasons)
    ("fits", {}, {}, []),
    # a not-ready node counts as tainted node.kubernetes.io/not-ready:NoSchedule
    ("not ready", {"ready": False}, {}, [TAINTED]),
    ("not ready but tolerated", {"ready": False}, {"tolerations": [NOT_READY_TOL]}, []),
    ("not ready, other taint key tolerated", {"ready": False},
     {"tolerations": [("node.kubernetes.io/unreachable", "Exists", "", "NoSchedule")]}, [TAINTED]),
    ("cordoned", {"unschedulable": True}, {}, [UNSCHEDULABLE]),
    ("cordoned but tolerated", {"unschedulable": True},
     {"tolerations": [("node.kubernetes.io/unschedulable", "Exists", "", "NoSchedule")]}, []),
    ("cpu too big", {}, {"cpu": "5"}, [INSUFFICIENT_CPU]),
    ("memory too big", {}, {"memory": "9Gi"}, [INSUFFICIENT_MEMORY]),
    ("both too big", {}, {"cpu": "5", "memory": "9Gi"}, [INSUFFICIENT_CPU, INSUFFICIENT_MEMORY]),
    ("exactly fits", {}, {"cpu": "4", "memory": "8Gi"}, []),
    ("pod limit", {"pods": "0"}, {}, [TOO_MANY_PODS]),
    ("selector matches", {"labels": {"zone": "a"}}, {"node_selector": {"zone": "a"}}, []),
    ("selector mismatch", {"labels": {"zone": "b"}}, {"node_selector": {"zone": "a"}}, [SELECTOR_MISMATCH]),
    ("selector label absent", {}, {"node_selector": {"zone": "a"}}, [SELECTOR_MISMATCH]),
    ("untolerated taint", {"taints": TAINT}, {}, [TAINTED]),
    ("tolerated Equal", {"taints": TAINT},
     {"tolerations": [("dedicated", "Equal", "gpu", "NoSchedule")]}, []),
    ("Equal wrong value", {"taints": TAINT}, {"tolerations": [("dedicated", "Equal", "tpu", "NoSchedule")]},
     [TAINTED]),
    ("tolerated Exists any effect", {"taints": TAINT},
     {"tolerations": [("dedicated", "Exists", "", "")]}, []),
    ("Exists wrong effect", {"taints": TAINT}, {"tolerations": [("dedicated", "Exists", "", "NoExecute")]},
     [TAINTED]),
    ("empty key Exists tolerates all", {"taints": TAINT}, {"tolerations": [("", "Exists", "", "")]}, []),
    ("PreferNoSchedule ignored", {"taints": [("soft", "x", "PreferNoSchedule")]}, {}, []),
    ("NoExecute counts", {"taints": [("hard", "", "NoExecute")]}, {},
     [TAINTED]),
    # the first failing filter wins, as in kube-scheduler
    ("not ready beats resources", {"ready": False}, {"cpu": "5"}, [TAINTED]),
    ("cordon beats not ready", {"ready": False, "unschedulable": True}, {}, [UNSCHEDULABLE]),
    ("taint beats selector", {"taints": TAINT}, {"node_selector": {"zone": "a"}},
     [TAINTED]),
]


@pytest.mark.parametrize(("case", "node_kw", "pod_kw", "want"), FILTER_CASES,
                         ids=[c[0] for c in FILTER_CASES])
def test_filters(case: str, node_kw: dict, pod_kw: dict, want: list[str]) -> None:
    node = ni("n1", **node_kw)
    pod = make_pod("p", **pod_kw)
    ok, why = feasible(pod, [node])
    assert (ok == [node]) == (not want)
    assert sorted(why.elements()) == sorted(want)


def test_resources_count_what_is_already_placed() -> None:
    node = ni("n1", "4", "8Gi", used=(3500, 7 * GI))
    assert feasible(make_pod("p", "500m", "1Gi"), [node])[0] == [node]
    assert dict(feasible(make_pod("p", "501m", "1Gi"), [node])[1]) == {INSUFFICIENT_CPU: 1}
    assert dict(feasible(make_pod("p", "500m", "1025Mi"), [node])[1]) == {INSUFFICIENT_MEMORY: 1}


@pytest.mark.parametrize(("tol", "taint", "want"), [
    (("k", "Equal", "v", "NoSchedule"), ("k", "v", "NoSchedule"), True),
    (("k", "", "v", ""), ("k", "v", "NoExecute"), True),  # operator defaults to Equal; any effect
    (("k", "Equal", "", ""), ("k", "", "NoSchedule"), True),
    (("k", "Equal", "v", ""), ("k", "w", "NoSchedule"), False),
    (("j", "Exists", "", ""), ("k", "v", "NoSchedule"), False),
    (("", "Exists", "", "NoSchedule"), ("k", "v", "NoSchedule"), True),
    (("k", "Bogus", "v", ""), ("k", "v", "NoSchedule"), False),
])
def test_tolerates(tol: tuple[str, str, str, str], taint: tuple[str, str, str], want: bool) -> None:
    k, op, v, e = tol
    t = k8s.V1Toleration(key=k or None, operator=op or None, value=v or None, effect=e or None)
    assert tolerates(t, k8s.V1Taint(key=taint[0], value=taint[1] or None, effect=taint[2])) is want


@pytest.mark.parametrize(("used", "req", "want"), [
    ((0, 0), (1000, 2 * GI), (75 + 75) // 2),
    ((2000, 0), (2000, 4 * GI), (0 + 50) // 2),
    ((0, 0), (0, 0), (97 + 97) // 2),  # zero requests score as 100m / 200Mi
    ((4000, 0), (1000, GI), (0 + 87) // 2),  # over capacity on cpu scores 0 for cpu
])
def test_least_allocated(used: tuple[int, int], req: tuple[int, int], want: int) -> None:
    assert least_allocated(ni("n", "4", "8Gi", used=used), Resources(*req)) == want


def test_score_prefers_emptier_node_and_breaks_ties_by_name() -> None:
    nodes = [ni("b"), ni("a"), ni("c", used=(1000, GI))]
    assert schedule(make_pod("p"), nodes).node == "a"
    nodes = [ni("b"), ni("a", used=(1000, GI))]
    assert schedule(make_pod("p"), nodes).node == "b"
    # a big node with some use can still beat a small empty one
    nodes = [ni("big", "16", "64Gi", used=(2000, 4 * GI)), ni("small", "2", "4Gi")]
    assert schedule(make_pod("p", "1", "1Gi"), nodes).node == "big"


def test_schedule_spreads_when_usage_is_accounted() -> None:
    nodes = [ni(f"n{i}") for i in range(3)]
    placed = []
    for i in range(6):
        pod = make_pod(f"p{i}", "1", "1Gi")
        d = schedule(pod, nodes)
        assert d.node is not None
        next(n for n in nodes if n.name == d.node).add(Resources(1000, GI))
        placed.append(d.node)
    assert placed == ["n0", "n1", "n2", "n0", "n1", "n2"]


def test_ready_condition_implies_its_taint() -> None:
    down = make_node("down", ready=False)
    assert [(t.key, t.effect) for t in node_taints(down)] == [("node.kubernetes.io/not-ready", "NoSchedule")]
    assert node_taints(make_node("up")) == []
    lost = make_node("lost")
    lost.status.conditions[0].status = "Unknown"
    assert [t.key for t in node_taints(lost)] == ["node.kubernetes.io/unreachable"]
    lost.status.conditions = []
    assert [t.key for t in node_taints(lost)] == ["node.kubernetes.io/unreachable"]
    # the controller already tainted it: not twice
    tainted = make_node("t", ready=False, taints=[("node.kubernetes.io/not-ready", "", "NoExecute")])
    assert [(t.key, t.effect) for t in node_taints(tainted)] == [
        ("node.kubernetes.io/not-ready", "NoExecute")]


def test_unschedulable_message_like_kube_scheduler() -> None:
    nodes = ([ni(f"small{i}", "1", "1Gi") for i in range(3)]
             + [ni(f"other{i}", labels={"zone": "b"}) for i in range(2)]
             + [ni("down", ready=False)])
    d = schedule(make_pod("p", "2", "512Mi", node_selector={"zone": "a"}), nodes)
    assert d.node is None
    # small nodes have no zone label: the selector filter rejects them before resources
    assert d.message == ("0/6 nodes are available: 1 node(s) had untolerated taint(s), "
                         "5 node(s) didn't match Pod's node affinity/selector.")
    d = schedule(make_pod("p", "2", "2Gi"), [*nodes[:3], ni("busy", "4", "8Gi", used=(3000, 0))])
    assert d.message == "0/4 nodes are available: 3 Insufficient memory, 4 Insufficient cpu."


@pytest.mark.parametrize(("total", "reasons", "want"), [
    (0, {}, "no nodes available to schedule pods"),
    (20, {"Insufficient cpu": 3, "node(s) were unschedulable": 17},
     "0/20 nodes are available: 17 node(s) were unschedulable, 3 Insufficient cpu."),
])
def test_fit_error_message(total: int, reasons: dict[str, int], want: str) -> None:
    assert fit_error_message(total, reasons) == want
