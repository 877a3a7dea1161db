"""The scheduler's console view (``/dashboard`` on its ``--metrics-addr``): the pods it
waits to place and those it placed, and each node's allocation (CPU, memory, pods) as
bars. Read from the scheduler's cache (its informers' copy): no call to the datastore."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from kvscheduler import objects as obj
from kvscheduler.scheduler import Scheduler

MAX_PENDING_LISTED = 100


def _name(key: str) -> str:
    """``/registry/pods/NS/NAME`` -> ``NS/NAME``."""
    return key[len(obj.POD_PREFIX):] if key.startswith(obj.POD_PREFIX) else key


def scheduler_view(s: Scheduler) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def view() -> dict[str, Any]:
        q = s.queue
        pending, bound, assumed = [], 0, 0
        for key, st in s.cache.pods.items():
            if st.node_name:
                bound += 1
            elif st.assumed:
                assumed += 1
            elif s.is_pending(st.pod):
                where = ("unschedulable" if key in q.unschedulable else "backoff" if key in q.backoff
                         else "active" if key in q.active else "waiting")
                pending.append({"name": _name(key), "queue": where})
        pending.sort(key=lambda p: p["name"])
        nodes = []
        for ni in s.cache.node_infos():
            n = ni.node
            nodes.append({
                "name": n.metadata.name, "ready": obj.node_ready(n),
                "cordoned": bool(n.spec and n.spec.unschedulable),
                "tainted": bool(n.spec and n.spec.taints),
                "cpu": [ni.requested.milli_cpu, ni.allocatable.milli_cpu],
                "memory": [ni.requested.memory, ni.allocatable.memory],
                "pods": [ni.pods, ni.max_pods],
            })
        st = s.stats
        return {
            "identity": s.identity, "scheduler_name": s.scheduler_name, "leader": s.is_leader,
            "queue": {"active": len(q.active), "backoff": len(q.backoff),
                      "unschedulable": len(q.unschedulable)},
            "pods": {"total": len(s.cache.pods), "bound": bound, "binding": assumed,
                     "pending": len(pending)},
            "pending": pending[:MAX_PENDING_LISTED],
            "nodes": nodes,
            "attempts": dict(s.attempts.count),
            "binds": {"done": st.binds, "conflicts": st.bind_conflicts, "errors": st.bind_errors,
                      "fenced": st.fenced},
        }
    return view
