"""The operator's console view (``/dashboard`` on its HTTP port): for each cluster it
reconciles, the spec against the status it observed, the planner's recent decisions with
their reasons and outcomes, and the Events it recorded. Read from the reconcilers'
memory: building the view makes no call to anything."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from kvoperator.reconcile import Reconciler


def cluster_view(rec: Reconciler) -> dict[str, Any]:
    spec, st, o = rec.last_spec, rec.last_status or {}, rec.last_observed
    workloads = []
    if o is not None:
        workloads = [{"ordinal": w.ordinal, "name": o.member_name(w.ordinal), "phase": w.phase.value,
                      "restarts": w.restarts, "has_data": w.has_data}
                     for w in sorted(o.workloads.values(), key=lambda w: w.ordinal)]
    conditions = {c["type"]: c for c in st.get("conditions", [])}
    return {
        "name": rec.cluster or (spec.name if spec else ""),
        "passes": rec.passes,
        "spec": None if spec is None else {"size": spec.size, "version": spec.version,
                                           "generation": spec.generation},
        "status": {"size": st.get("size"), "readyMembers": st.get("readyMembers"),
                   "leaderID": st.get("leaderID", ""), "observedGeneration": st.get("observedGeneration"),
                   "members": st.get("members", []), "conditions": list(conditions.values())},
        "progressing": conditions.get("Progressing", {}).get("status") == "True",
        "workloads": workloads,
        "actions": list(reversed(rec.actions)),
        "events": list(reversed(rec.events)),
    }


def operator_view(reconcilers: Callable[[], Iterable[Reconciler]]) -> Callable[[], Any]:
    """The console's snapshot function over the reconcilers there are at each call."""
    async def view() -> dict[str, Any]:
        return {"clusters": [cluster_view(r) for r in reconcilers()]}
    return view
