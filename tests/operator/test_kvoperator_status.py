"""The status builder: CRD field names, conditions and their transition times."""

from __future__ import annotations

from dataclasses import replace

from kvoperator.planner import Action, ActionKind, Member, MemberStatus, Observed, Phase, Workload, plan
from kvoperator.status import build_status, same_status


def observed(n: int = 3, healthy: int = 3, size: int = 3) -> Observed:
    members = tuple(Member(0xA0 + i, f"c-{i}", (f"http://h:{i}1",), (f"http://h:{i}0",), ordinal=i)
                    for i in range(n))
    statuses = {i: MemberStatus(0xA0 + i, 7, 0xA1, 10, 10) for i in range(healthy)}
    return Observed("c", size, 3, members, 7, statuses, {i: Workload(i, Phase.RUNNING) for i in range(n)})


def conds(st: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {c["type"]: c for c in st["conditions"]}


def test_converged_status_fields() -> None:
    o = observed()
    st = build_status(o, plan(o), "T1")
    assert st["observedGeneration"] == 3 and st["size"] == 3 and st["readyMembers"] == 3
    assert st["selector"] == "datastore.dev/cluster=c"
    assert st["leaderID"] == "a1"
    assert st["members"][1] == {"name": "c-1", "id": "a1", "peerURL": "http://h:11",
                                "clientURL": "http://h:10", "isLearner": False, "isLeader": True,
                                "healthy": True}
    c = conds(st)
    assert (c["Available"]["status"], c["Available"]["reason"]) == ("True", "QuorumAvailable")
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("False", "Converged")
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("False", "AllMembersHealthy")
    assert all(x["observedGeneration"] == 3 for x in st["conditions"])


def test_quorum_lost_is_degraded_with_what_to_do() -> None:
    o = observed(healthy=1)
    a = plan(o)
    assert a.kind is ActionKind.DEGRADED
    c = conds(build_status(o, a, "T1"))
    assert (c["Available"]["status"], c["Available"]["reason"]) == ("False", "QuorumLost")
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", "QuorumLost")
    assert "snapshot" in c["Degraded"]["message"]
    assert c["Progressing"]["status"] == "False"


def test_scaling_is_progressing() -> None:
    o = observed(size=5)
    c = conds(build_status(o, plan(o), "T1"))
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("True", "ScalingUp")


def test_transition_time_kept_while_status_unchanged() -> None:
    o = observed()
    first = build_status(o, plan(o), "T1")
    again = build_status(o, plan(o), "T2", first["conditions"])
    assert [x["lastTransitionTime"] for x in again["conditions"]] == ["T1", "T1", "T1"]
    assert same_status(first, again)
    sick = replace(o, statuses={i: s for i, s in o.statuses.items() if i != 2})
    changed = build_status(sick, Action(ActionKind.WAIT, "waiting", "MemberUnhealthy"), "T3",
                           again["conditions"])
    c = conds(changed)
    assert c["Degraded"]["lastTransitionTime"] == "T3" and c["Available"]["lastTransitionTime"] == "T1"
    assert not same_status(again, changed)
