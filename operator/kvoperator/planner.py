"""The planner: what the cluster looks like in, the ONE next action out, with its reason.

Pure: no I/O, no clock, no randomness. The platforms (local processes, Kubernetes)
observe, call :func:`plan`, carry out the action and observe again (level-triggered: the
next plan is made from what is there, never from what the last action hoped for).

Theory of operation. Members are numbered by ordinal: member ``<name>-<i>`` owns slot
``i`` (its data dir / PVC, its ports / DNS name). The rules, in the order they are
tried (the first that applies wins):

1. No member list (no member answers): bootstrap member 0 if there is nothing at all;
   restart workloads that still have their data; otherwise report and wait.
2. A member in the member list whose process/pod is gone or exited but whose data is
   there is restarted with its data (non-destructive, may bring quorum back). A learner
   added but never started (no name yet) is started with ``--initial-cluster-state
   existing`` and an initial cluster built from the live member list.
3. Fewer live voters than a quorum: nothing destructive; Degraded with what to do.
4. A member that lost its data (it has started once, its data is gone), keeps crashing
   (and is not healthy now) or whose process reports another member or cluster ID is
   removed, so that it is re-added with a new ID and fresh data -- only when the rest
   keeps a quorum.
5. A process/pod whose slot has no member in the list is deleted with its data.
6. Membership changes only while every voter is live (and every member is one of
   ours: a member added by hand outside the slots is reported): a learner is promoted once it
   has caught up (or removed when it is not needed), never two learners; then scale up
   (lowest free ordinal, MemberAdd as learner) or down (highest ordinal: move the
   leadership away first, then MemberRemove; rule 5 then deletes its process and data).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

CRASHLOOP_RESTARTS = 5  # restarts before a member counts as crash-looping (cozystack uses 5)
LEARNER_READY_PERCENT = 90  # as the server's own check: within 90% of the leader's index


class ActionKind(Enum):
    NONE = "None"  # converged: nothing to do
    WAIT = "Wait"  # something is in flight (a member starting, a learner catching up)
    DEGRADED = "Degraded"  # unsafe to act; the reason says what the user must do
    BOOTSTRAP = "Bootstrap"  # start member 0 as a new one-member cluster
    START_MEMBER = "StartMember"  # start a member of the list (fresh learner, or restart with data)
    ADD_LEARNER = "AddLearner"  # MemberAdd(is_learner=True) for the peer URL of `ordinal`
    PROMOTE = "Promote"  # MemberPromote(member_id)
    MOVE_LEADER = "MoveLeader"  # MoveLeader(target_id), sent to the current leader
    REMOVE_MEMBER = "RemoveMember"  # MemberRemove(member_id)
    DELETE_WORKLOAD = "DeleteWorkload"  # delete the process/pod of `ordinal` (and its data)


# Actions that can lower the number of live voters; only planned while a quorum stays.
DESTRUCTIVE = frozenset({ActionKind.REMOVE_MEMBER, ActionKind.DELETE_WORKLOAD, ActionKind.MOVE_LEADER})


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    reason: str  # one sentence for logs, Events and conditions
    condition: str = "Converged"  # CamelCase reason for the Progressing/Degraded conditions
    ordinal: int | None = None
    member_id: int | None = None
    target_id: int | None = None  # MOVE_LEADER: the member that takes over
    initial_cluster: str = ""  # START_MEMBER: NAME=PEER_URL,... of the live member list
    initial_cluster_state: str = ""  # START_MEMBER/BOOTSTRAP: "existing" / "new"
    delete_data: bool = False  # DELETE_WORKLOAD

    @property
    def changes_something(self) -> bool:
        return self.kind not in (ActionKind.NONE, ActionKind.WAIT, ActionKind.DEGRADED)


@dataclass(frozen=True, slots=True)
class Member:
    """One entry of MemberList."""

    id: int
    name: str  # "" until the member has started and published itself
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False
    ordinal: int | None = None  # the slot its peer URL belongs to; None: not ours


class Phase(Enum):
    RUNNING = "Running"  # the process/pod is up (it may not be healthy yet)
    PENDING = "Pending"  # created, not running yet (pod scheduling, image pull)
    EXITED = "Exited"  # process gone / pod failed, data still there
    MISSING = "Missing"  # no process or pod, data still there


@dataclass(frozen=True, slots=True)
class Workload:
    """The process (local) or pod+PVC (Kubernetes) of one slot."""

    ordinal: int
    phase: Phase
    restarts: int = 0  # consecutive restarts without becoming healthy
    has_data: bool = True  # data dir / PVC exists


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """The Status answer of the process at one slot (absent when it does not answer)."""

    member_id: int
    cluster_id: int
    leader_id: int
    raft_index: int
    applied_index: int
    is_learner: bool = False
    errors: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.leader_id != 0 and not self.errors


@dataclass(frozen=True, slots=True)
class Observed:
    name: str  # metadata.name; member i is "<name>-<i>"
    size: int  # spec.size
    generation: int = 0
    members: tuple[Member, ...] | None = None  # None: no member answered MemberList
    cluster_id: int = 0  # from the MemberList header
    statuses: Mapping[int, MemberStatus] = field(default_factory=dict)  # by ordinal
    workloads: Mapping[int, Workload] = field(default_factory=dict)  # by ordinal
    member_list_error: str = ""

    def member_name(self, ordinal: int) -> str:
        return f"{self.name}-{ordinal}"


def quorum(voters: int) -> int:
    return voters // 2 + 1


def is_live(o: Observed, m: Member) -> bool:
    """Its process runs, answers Status as this member of this cluster, and sees a leader."""
    if m.ordinal is None:
        return False
    w, st = o.workloads.get(m.ordinal), o.statuses.get(m.ordinal)
    return (w is not None and w.phase is Phase.RUNNING and st is not None and st.healthy
            and st.member_id == m.id and (o.cluster_id == 0 or st.cluster_id == o.cluster_id))


def live_voters(o: Observed) -> int:
    return sum(1 for m in o.members or () if not m.is_learner and is_live(o, m))


def _by_ordinal(m: Member) -> tuple[int, int]:
    return (m.ordinal if m.ordinal is not None else 1 << 30, m.id)


def _initial_cluster(o: Observed, members: tuple[Member, ...]) -> str:
    parts = []
    for m in sorted(members, key=_by_ordinal):
        name = m.name or (o.member_name(m.ordinal) if m.ordinal is not None else f"{m.id:x}")
        parts.extend(f"{name}={u}" for u in m.peer_urls)
    return ",".join(parts)


def _failure(o: Observed, m: Member) -> str:
    """Why this member must be replaced (removed and re-added with a new ID), or ""."""
    if m.ordinal is None:
        return ""
    w, st = o.workloads.get(m.ordinal), o.statuses.get(m.ordinal)
    started = bool(m.name)
    # A running process keeps its open files, and a fresh learner publishes its name right
    # after creating its data dir (which the observation may have looked at just before):
    # only a member that is not running and has no data has lost it.
    running = w is not None and w.phase is Phase.RUNNING
    if started and not running and (w is None or not w.has_data):
        return f"member {m.name} ({m.id:x}) lost its data"
    if w is not None and w.restarts >= CRASHLOOP_RESTARTS and not is_live(o, m):
        return f"member {o.member_name(m.ordinal)} ({m.id:x}) keeps crashing ({w.restarts} restarts)"
    if w is not None and w.phase is Phase.RUNNING and st is not None:
        if st.member_id != m.id:
            return (f"the process of {o.member_name(m.ordinal)} runs as member {st.member_id:x}, "
                    f"the member list has {m.id:x}: its data does not match the cluster")
        if o.cluster_id and st.cluster_id != o.cluster_id:
            return (f"the process of {o.member_name(m.ordinal)} belongs to cluster "
                    f"{st.cluster_id:x}, not {o.cluster_id:x}: its data does not match the cluster")
    return ""


def _applied(o: Observed, m: Member) -> int:
    st = o.statuses.get(m.ordinal) if m.ordinal is not None else None
    return st.applied_index if st is not None else 0


def _leader(o: Observed) -> int:
    """The leader the live members agree on (0 if none or they disagree)."""
    ids = {st.leader_id for st in o.statuses.values() if st.healthy}
    return ids.pop() if len(ids) == 1 else 0


def plan(o: Observed) -> Action:
    if o.members is None:
        return _plan_without_members(o)
    members = o.members
    ours = {m.ordinal: m for m in members if m.ordinal is not None}
    voters = [m for m in members if not m.is_learner]
    learners = sorted((m for m in members if m.is_learner), key=_by_ordinal)
    nv, live = len(voters), live_voters(o)

    # 2. Bring back members whose process is gone but whose data is there (or who never ran).
    for m in sorted(members, key=_by_ordinal):
        if m.ordinal is None or _failure(o, m):
            continue
        w = o.workloads.get(m.ordinal)
        if w is None or w.phase in (Phase.EXITED, Phase.MISSING):
            if m.name:
                reason = (f"member {m.name} ({m.id:x}) is in the member list but its process is "
                          "not running: restarting it with its data")
                cond = "RestartingMember"
            else:
                reason = (f"member {o.member_name(m.ordinal)} ({m.id:x}) was added but has not "
                          "started: starting it to join the existing cluster")
                cond = "ScalingUp"
            return Action(ActionKind.START_MEMBER, reason, cond, ordinal=m.ordinal, member_id=m.id,
                          initial_cluster=_initial_cluster(o, members),
                          initial_cluster_state="existing")

    # 3. Without a quorum nothing destructive can be done safely.
    if live < quorum(nv):
        down = ", ".join(m.name or f"{m.id:x}" for m in voters if not is_live(o, m))
        return Action(ActionKind.DEGRADED,
                      f"quorum lost: {live} of {nv} voters live, {quorum(nv)} needed (down: {down}); "
                      "the operator changes nothing. Bring the down members back with their data; "
                      "if their data is gone, restore from a backup taken with `etcdctl snapshot "
                      "save`: `datastore snapshot restore FILE` into fresh data dirs, then start a "
                      "new cluster from them", "QuorumLost")

    # 4. Replace failed members: remove now; rules 5 and 6 re-add a fresh one.
    for m in sorted(members, key=_by_ordinal):
        why = _failure(o, m)
        if not why:
            continue
        after_v = nv - (0 if m.is_learner else 1)
        after_live = live - (1 if not m.is_learner and is_live(o, m) else 0)
        if after_v >= 1 and after_live >= quorum(after_v):
            return Action(ActionKind.REMOVE_MEMBER, f"{why}: removing it to re-add it with a new ID "
                          "and fresh data", "ReplacingMember", ordinal=m.ordinal, member_id=m.id)
        # Defensive: every failure above implies "not live", so rule 3 already covers this.
        return Action(ActionKind.DEGRADED, f"{why}, but removing it would leave {after_live} live of "
                      f"{after_v} voters, below a quorum: waiting for other members to recover",
                      "ReplaceBlocked", ordinal=m.ordinal, member_id=m.id)

    # 5. Processes/pods of slots that are not (or no longer) members: delete them and their data.
    for ordinal in sorted(o.workloads):
        if ordinal not in ours:
            return Action(ActionKind.DELETE_WORKLOAD,
                          f"{o.member_name(ordinal)} runs or has data but is not in the member list: "
                          "deleting its process and data", "CleaningUp",
                          ordinal=ordinal, delete_data=True)

    # 6. Membership changes: only while every voter is live.
    foreign = [m for m in members if m.ordinal is None]
    if foreign:
        m = foreign[0]
        return Action(ActionKind.DEGRADED, f"member {m.name or '?'} ({m.id:x}, {', '.join(m.peer_urls)}) "
                      "is not one of this cluster's slots, so its health cannot be checked and no "
                      f"membership change is safe: remove it (etcdctl member remove {m.id:x}) if it "
                      "does not belong here", "ForeignMember", member_id=m.id)
    sick = [m for m in voters if not is_live(o, m)]
    if sick:
        names = ", ".join(m.name or f"{m.id:x}" for m in sick)
        return Action(ActionKind.WAIT, f"waiting for {names} to become healthy before any "
                      "membership change", "MemberUnhealthy")
    leader = _leader(o)
    if leader == 0:
        return Action(ActionKind.WAIT, "the members do not agree on a leader yet", "NoLeader")
    if len(learners) > 1:
        m = learners[-1]
        return Action(ActionKind.REMOVE_MEMBER, f"{len(learners)} learners: removing "
                      f"{m.name or f'{m.id:x}'}, one learner at a time", "ScalingDown",
                      ordinal=m.ordinal, member_id=m.id)
    if learners:
        m = learners[0]
        if nv >= o.size:
            return Action(ActionKind.REMOVE_MEMBER, f"learner {m.name or f'{m.id:x}'} is not needed: "
                          f"{nv} voters, size {o.size}", "ScalingDown",
                          ordinal=m.ordinal, member_id=m.id)
        st = o.statuses.get(m.ordinal) if m.ordinal is not None else None
        label = m.name or o.member_name(m.ordinal if m.ordinal is not None else 0)
        if not is_live(o, m) or st is None:
            return Action(ActionKind.WAIT, f"learner {label} is starting",
                          "ScalingUp", ordinal=m.ordinal, member_id=m.id)
        target = max((_applied(o, x) for x in voters if x.id == leader), default=0)
        if st.applied_index > 0 and st.applied_index * 100 >= target * LEARNER_READY_PERCENT:
            return Action(ActionKind.PROMOTE, f"learner {label} has caught up (applied "
                          f"{st.applied_index} of {target}): promoting it", "ScalingUp",
                          ordinal=m.ordinal, member_id=m.id)
        return Action(ActionKind.WAIT, f"learner {label} is catching up (applied "
                      f"{st.applied_index} of {target})", "ScalingUp", ordinal=m.ordinal, member_id=m.id)
    if nv < o.size:
        free = next(i for i in range(len(members) + len(o.workloads) + 1)
                    if i not in ours and i not in o.workloads)
        return Action(ActionKind.ADD_LEARNER, f"{nv} voters, size {o.size}: adding "
                      f"{o.member_name(free)} as a learner", "ScalingUp", ordinal=free)
    if nv > o.size:
        m = max(voters, key=_by_ordinal)
        if m.id == leader:
            t = max((x for x in voters if x.id != m.id),
                    key=lambda x: (_applied(o, x), -_by_ordinal(x)[0]))
            return Action(ActionKind.MOVE_LEADER, f"{nv} voters, size {o.size}: {m.name} is to be "
                          f"removed and is the leader: moving leadership to {t.name} first",
                          "ScalingDown", ordinal=m.ordinal, member_id=m.id, target_id=t.id)
        return Action(ActionKind.REMOVE_MEMBER, f"{nv} voters, size {o.size}: removing {m.name} "
                      "(highest ordinal)", "ScalingDown", ordinal=m.ordinal, member_id=m.id)
    return Action(ActionKind.NONE, f"{nv} healthy voters, size {o.size}", "Converged")


def _plan_without_members(o: Observed) -> Action:
    """No member answered MemberList: only bootstrapping and restarts are safe."""
    if not o.workloads:
        return Action(ActionKind.BOOTSTRAP, "no members and no data: bootstrapping "
                      f"{o.member_name(0)} as a new one-member cluster", "Bootstrapping",
                      ordinal=0, initial_cluster_state="new")
    for ordinal, w in sorted(o.workloads.items()):
        if w.has_data and w.phase in (Phase.EXITED, Phase.MISSING):
            return Action(ActionKind.START_MEMBER, f"{o.member_name(ordinal)} has data but its "
                          "process is not running: restarting it with its data", "RestartingMember",
                          ordinal=ordinal, initial_cluster_state="existing")
    if any(w.phase in (Phase.RUNNING, Phase.PENDING) for w in o.workloads.values()):
        return Action(ActionKind.WAIT, "no member answers MemberList yet"
                      + (f" ({o.member_list_error})" if o.member_list_error else ""), "NoMemberList")
    return Action(ActionKind.DEGRADED, "no member answers and no member has data left: the cluster "
                  "is lost; restore it from a snapshot (datastore snapshot restore) or delete the "
                  "workdir/PVCs to start an empty cluster", "QuorumLost")
