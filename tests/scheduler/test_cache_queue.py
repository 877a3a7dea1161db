"""The node usage cache (incl. assumed pods) and the scheduling queue."""

from __future__ import annotations

import pytest

from kvscheduler.cache import Cache
from kvscheduler.objects import Resources, bound, make_node, make_pod
from kvscheduler.workqueue import BACKOFF_INITIAL, SchedulingQueue

MI = 1024 ** 2


def test_usage_follows_bound_assumed_and_deleted_pods() -> None:
    c = Cache()
    c.set_node(make_node("n1", "4", "8Gi"))
    c.set_pod("k1", make_pod("p1", "1", "1Gi"), 10)
    assert c.usage("n1") == (Resources(), 0)
    c.assume("k1", "n1")
    assert c.nodes["n1"].requested == Resources(1000, 1024 * MI)
    # the bind's event confirms the assumption without double counting
    c.set_pod("k1", bound(make_pod("p1", "1", "1Gi"), "n1"), 11)
    assert c.usage("n1") == (Resources(1000, 1024 * MI), 1)
    assert c.pods["k1"].assumed is None
    c.forget("k1")  # a late forget of a confirmed pod changes nothing
    assert c.usage("n1")[1] == 1
    c.remove_pod("k1")
    assert c.usage("n1") == (Resources(), 0)
    assert c.nodes["n1"].pods == 0


def test_forget_undoes_assume_and_update_keeps_assumption() -> None:
    c = Cache()
    c.set_node(make_node("n1"))
    c.set_pod("k", make_pod("p", "500m", "1Mi"), 1)
    c.assume("k", "n1")
    c.set_pod("k", make_pod("p", "500m", "1Mi"), 2)  # e.g. our status write: still assumed
    assert c.usage("n1") == (Resources(500, MI), 1)
    c.forget("k")
    assert c.usage("n1") == (Resources(), 0)


def test_pods_bound_before_their_node_is_seen_and_terminal_pods() -> None:
    c = Cache()
    c.set_pod("k1", bound(make_pod("p1", "1", "1Gi"), "late"), 1)
    done = bound(make_pod("p2", "1", "1Gi"), "late")
    done.status.phase = "Succeeded"
    c.set_pod("k2", done, 2)
    c.set_node(make_node("late"))
    assert c.nodes["late"].requested == Resources(1000, 1024 * MI)
    c.set_node(make_node("late", "8"))  # a node update keeps its usage
    assert c.nodes["late"].pods == 1
    assert [n.name for n in c.node_infos()] == ["late"]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_queue_fifo_backoff_and_unschedulable() -> None:
    clock = FakeClock()
    q = SchedulingQueue(clock)
    for k in ("a", "b", "c"):
        q.add(k)
    q.add("a")  # no duplicates
    assert q.pop() == "a"
    assert q.retry_later("a") == BACKOFF_INITIAL
    q.park_unschedulable("c")
    assert q.pop() == "b"
    assert q.pop() is None
    assert "a" in q and "c" in q and len(q) == 2
    assert q.next_ready_in() == pytest.approx(BACKOFF_INITIAL)
    clock.t += BACKOFF_INITIAL
    assert q.pop() == "a"
    assert q.retry_later("a") == 2 * BACKOFF_INITIAL  # exponential per consecutive failure
    assert q.move_all_unschedulable() == 1
    assert q.pop() == "c"
    q.remove("a")
    assert q.pop() is None and len(q) == 0 and q.next_ready_in() is None


def test_queue_add_moves_parked_pod_but_keeps_backoff() -> None:
    clock = FakeClock()
    q = SchedulingQueue(clock)
    q.park_unschedulable("x")
    q.add("x")
    assert q.pop() == "x"
    q.retry_later("x")
    q.add("x")
    assert q.pop() is None
