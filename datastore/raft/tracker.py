"""The leader's per-follower replication state (etcd-io/raft ``tracker/``).

``Progress`` is the flow-control state machine of thesis §3.5 / §10.2.1: a follower is
*probed* one MsgApp at a time until its match index is known, then *replicated* to with
up to ``max_inflight`` pipelined MsgApps, or sent a *snapshot* when the entries it needs
were compacted away.
"""

from __future__ import annotations

from collections import deque

from datastore.raft.quorum import VoteResult, committed_index, vote_result
from datastore.raft.types import ConfState, ProgressStateType

StateProbe = ProgressStateType.StateProbe
StateReplicate = ProgressStateType.StateReplicate
StateSnapshot = ProgressStateType.StateSnapshot


class Inflights:
    """The last index of each MsgApp sent but not yet acknowledged, oldest first."""

    __slots__ = ("_q", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._q: deque[int] = deque()

    def add(self, index: int) -> None:
        self._q.append(index)

    def free_le(self, index: int) -> None:
        """Forget every MsgApp whose last index is <= ``index`` (it was acknowledged)."""
        q = self._q
        while q and q[0] <= index:
            q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.size

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()


class Progress:
    """What the leader knows about one peer.

    Invariant: ``match < next``. ``match`` only grows within a term; ``next`` may move
    back when the follower rejects a MsgApp.
    """

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "msg_app_flow_paused",
        "next",
        "pending_snapshot",
        "recent_active",
        "state",
    )

    def __init__(self, match: int, next_index: int, max_inflight: int, is_learner: bool) -> None:
        self.match = match
        self.next = next_index
        self.state = StateProbe
        # Probe: one MsgApp was sent and we wait for its answer (or a heartbeat response).
        # Replicate: the inflight window is full.
        self.msg_app_flow_paused = False
        # Index of the snapshot in flight while in StateSnapshot.
        self.pending_snapshot = 0
        # Set by any message from the peer; cleared by the leader every election timeout
        # to implement CheckQuorum (thesis §6.2).
        self.recent_active = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner

    def _reset_state(self, state: ProgressStateType) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == StateSnapshot:
            # Resume after the snapshot: the follower has at least the snapshot.
            pending = self.pending_snapshot
            self._reset_state(StateProbe)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(StateProbe)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(StateReplicate)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(StateSnapshot)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """Record an acknowledgement of index ``n``; False if it was stale."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.msg_app_flow_paused = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def sent_entries(self, last_index: int | None) -> None:
        """Account for a MsgApp just sent; ``last_index`` is None when it had no entries."""
        if self.state == StateReplicate:
            if last_index is not None:
                # Optimistic: assume delivery, pipeline the next batch (thesis §10.2.1).
                self.next = last_index + 1
                self.inflights.add(last_index)
            if self.inflights.full():
                # Window full: wait for acks. A heartbeat response also lifts this, so one
                # MsgApp probes past lost ones (the follower's rejection resets next).
                self.msg_app_flow_paused = True
        elif self.state == StateProbe:
            self.msg_app_flow_paused = True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Move ``next`` back after the follower rejected the MsgApp at ``rejected``.

        Returns False for a stale rejection (one that does not concern the current probe).
        """
        if self.state == StateReplicate:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        if self.state == StateProbe:
            return self.msg_app_flow_paused
        if self.state == StateReplicate:
            return self.msg_app_flow_paused
        return True


class ProgressTracker:
    """Membership (voters, learners) plus a ``Progress`` for every member.

    Every node keeps one, leader or not, because it is also the node's view of the
    configuration; only the leader uses match/next.
    """

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def conf_state(self) -> ConfState:
        return ConfState(voters=tuple(sorted(self.voters)), learners=tuple(sorted(self.learners)))

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def committed(self) -> int:
        progress = self.progress
        return committed_index(self.voters, {v: progress[v].match for v in self.voters})

    def quorum_active(self, self_id: int) -> bool:
        votes = {}
        for v in self.voters:
            pr = self.progress[v]
            votes[v] = v == self_id or pr.recent_active
        return vote_result(self.voters, votes) == VoteResult.VoteWon

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> VoteResult:
        return vote_result(self.voters, self.votes)
