"""The CR status the operator writes (status subresource on Kubernetes, status.yaml locally).

Built from what was observed and what the planner chose; pure. Conditions keep their
``lastTransitionTime`` while their status does not change, as Kubernetes expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvoperator.planner import Action, ActionKind, Observed, is_live, live_voters, quorum

SELECTOR_LABEL = "datastore.dev/cluster"


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int, now: str,
               previous: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = previous.get(type_)
    since = old["lastTransitionTime"] if old and old.get("status") == status else now
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


def build_status(o: Observed, action: Action, now: str,
                 previous_conditions: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Status fields per the CRD: observedGeneration, size, selector, readyMembers, leaderID,
    members[], conditions[] (Available, Progressing, Degraded)."""
    prev = {c["type"]: c for c in previous_conditions if "type" in c}
    members = sorted(o.members or (), key=lambda m: (m.ordinal is None, m.ordinal or 0, m.id))
    leader = 0
    out_members = []
    for m in members:
        st = o.statuses.get(m.ordinal) if m.ordinal is not None else None
        if st is not None and st.healthy and st.member_id == m.id and st.leader_id:
            leader = leader or st.leader_id
    for m in members:
        out_members.append({
            "name": m.name or (o.member_name(m.ordinal) if m.ordinal is not None else ""),
            "id": f"{m.id:x}",
            "peerURL": m.peer_urls[0] if m.peer_urls else "",
            "clientURL": m.client_urls[0] if m.client_urls else "",
            "isLearner": m.is_learner,
            "isLeader": m.id == leader,
            "healthy": is_live(o, m),
        })
    voters = [m for m in members if not m.is_learner]
    live = live_voters(o)
    ready = sum(1 for m in members if is_live(o, m))
    if o.members is None:
        available = (False, "NoMemberList", "no member answers MemberList"
                     + (f": {o.member_list_error}" if o.member_list_error else ""))
    elif live >= quorum(len(voters)):
        available = (True, "QuorumAvailable", f"{live} of {len(voters)} voters healthy")
    else:
        available = (False, "QuorumLost", f"{live} of {len(voters)} voters healthy, "
                     f"{quorum(len(voters))} needed")
    converged = action.kind is ActionKind.NONE
    progressing = (not converged and action.kind is not ActionKind.DEGRADED,
                   action.condition, action.reason)
    sick = [d["name"] for d in out_members if not d["healthy"]]
    if action.kind is ActionKind.DEGRADED:
        degraded = (True, action.condition, action.reason)
    elif sick:
        degraded = (True, "MemberUnhealthy", "not healthy: " + ", ".join(sick))
    else:
        degraded = (False, "AllMembersHealthy", f"{ready} members healthy")
    g = o.generation
    return {
        "observedGeneration": g,
        "size": len(voters),
        "selector": f"{SELECTOR_LABEL}={o.name}",
        "readyMembers": ready,
        "leaderID": f"{leader:x}" if leader else "",
        "members": out_members,
        "conditions": [
            _condition("Available", *available, g, now, prev),
            _condition("Progressing", *progressing, g, now, prev),
            _condition("Degraded", *degraded, g, now, prev),
        ],
    }


def same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    """Equal apart from condition timestamps (so an unchanged status is not rewritten)."""
    if a is None:
        return False

    def strip(s: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(s)
        d["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                           for c in s.get("conditions", [])]
        return d
    return strip(a) == strip(b)
