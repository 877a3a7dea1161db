"""The Raft state machine (etcd-io/raft ``raft.go``), composed from one mixin per seam.

Rule 1: every role transition (``become_*``, ``reset``) lives in this file, with the term
handling shared by all roles (``step``) and the ticks. Rule 2: nothing in the core knows
about clocks, sockets, disks or asyncio; time is ``tick()``, randomness is ``Config.rand``
and output is appended to ``msgs`` / ``read_states`` for ``RawNode.ready()`` to collect.

Roles are swapped functions (``step_*``, ``tick_*``), not subclasses: ``step()`` runs the
term handling shared by all roles, then the current role's ``_step``. The rest of
``Raft`` lives beside this file, one concern per module, all methods of the same object
(the mixins hold no state of their own; every field is set in ``Raft.__init__``, and
``base.py`` declares what one seam uses of another, for type checkers):

- ``replication.py``: MsgApp/MsgSnap/heartbeat sending, appending, committing.
- ``election.py``: hup, campaign, poll, ``step_candidate``.
- ``leader.py``: ``step_leader`` (proposals, append responses, leadership transfer).
- ``follower.py``: ``step_follower`` and the append/heartbeat/snapshot handlers.
- ``read_index.py``: the leader's ReadIndex answers (thesis §6.4).
- ``membership.py``: applying conf changes to the progress tracker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from datastore.raft.election import (
    CAMPAIGN_ELECTION,
    CAMPAIGN_PRE_ELECTION,
    CAMPAIGN_TRANSFER,
    ElectionMixin,
)
from datastore.raft.follower import FollowerMixin
from datastore.raft.leader import LeaderMixin
from datastore.raft.log import RaftLog
from datastore.raft.membership import MembershipMixin
from datastore.raft.read_index import ReadIndexMixin
from datastore.raft.read_only import ReadOnly
from datastore.raft.replication import ReplicationMixin
from datastore.raft.storage import Storage
from datastore.raft.tracker import Progress, ProgressTracker
from datastore.raft.types import (
    NONE,
    Entry,
    HardState,
    Message,
    MsgType,
    ReadState,
    SoftState,
    StateType,
)

__all__ = [
    "CAMPAIGN_ELECTION",
    "CAMPAIGN_PRE_ELECTION",
    "CAMPAIGN_TRANSFER",
    "Config",
    "Raft",
]

M = MsgType


@dataclass
class Config:
    """Parameters of one node. ``storage`` must already hold the bootstrap ConfState."""

    id: int
    storage: Storage
    election_tick: int = 10
    heartbeat_tick: int = 1
    # Last index the state machine applied before this (re)start; entries up to it are
    # not handed out again. Storage's ConfState must reflect this index.
    applied: int = 0
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    check_quorum: bool = True
    pre_vote: bool = True
    max_committed_size_per_ready: int = 64 << 20
    rand: random.Random | None = field(default=None, repr=False)

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("raft: cannot use NONE as id")
        if self.heartbeat_tick <= 0:
            raise ValueError("raft: heartbeat tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("raft: election tick must be greater than heartbeat tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("raft: max inflight messages must be greater than 0")


class Raft(ReplicationMixin, ElectionMixin, LeaderMixin, FollowerMixin, ReadIndexMixin, MembershipMixin):
    def __init__(self, c: Config) -> None:
        c.validate()
        self.id = c.id
        self.rand = c.rand if c.rand is not None else random.Random(c.id)
        self.log = RaftLog(c.storage, c.max_committed_size_per_ready)
        hs, cs = c.storage.initial_state()
        self.max_msg_size = c.max_size_per_msg
        self.trk = ProgressTracker(c.max_inflight_msgs)
        self.election_timeout = c.election_tick
        self.heartbeat_timeout = c.heartbeat_tick
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.state = StateType.StateFollower
        self.is_learner = False
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = c.election_tick
        self.lead_transferee = NONE
        # Index of the latest conf change the leader may have in its log; a new one is
        # refused until applied >= this (one membership change at a time, thesis §4.1).
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        # MsgReadIndex that arrived before the leader committed an entry of its term.
        self.pending_read_index: list[Message] = []
        self._step: Callable[[Message], None] = self.step_follower
        self.tick: Callable[[], None] = self.tick_election

        self._apply_conf_state(cs)
        if hs != HardState():
            self.term = hs.term
            self.vote = hs.vote
            self.log.commit_to(hs.commit)
        if c.applied > 0:
            if c.applied > self.log.committed:
                raise ValueError(f"raft: applied {c.applied} > committed {self.log.committed}")
            self.log.applied_to(c.applied)
        self.become_follower(self.term, NONE)

    # -- state snapshots ---------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(lead=self.lead, raft_state=self.state)

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def promotable(self) -> bool:
        """Only voters campaign; learners and removed nodes never do."""
        return self.id in self.trk.voters

    # -- role transitions --------------------------------------------------------

    def reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.lead_transferee = NONE
        self.trk.reset_votes()
        last = self.log.last_index()
        for pid, pr in self.trk.progress.items():
            self.trk.progress[pid] = Progress(
                # Our own entries count only once persisted (see on_persisted).
                self.log.stable_last_index() if pid == self.id else 0,
                last + 1,
                self.trk.max_inflight,
                pr.is_learner,
            )
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self.pending_read_index = []

    def reset_randomized_election_timeout(self) -> None:
        # Thesis §3.4: randomized in [election_timeout, 2 * election_timeout).
        self.randomized_election_timeout = self.election_timeout + self.rand.randrange(self.election_timeout)

    def become_follower(self, term: int, lead: int) -> None:
        self._step = self.step_follower
        self.reset(term)
        self.tick = self.tick_election
        self.lead = lead
        self.state = StateType.StateFollower

    def become_candidate(self) -> None:
        if self.state == StateType.StateLeader:
            raise AssertionError("raft: invalid transition [leader -> candidate]")
        self._step = self.step_candidate
        self.reset(self.term + 1)
        self.tick = self.tick_election
        self.vote = self.id
        self.state = StateType.StateCandidate

    def become_pre_candidate(self) -> None:
        """Thesis §9.6: a pre-candidate polls without bumping its term or vote."""
        if self.state == StateType.StateLeader:
            raise AssertionError("raft: invalid transition [leader -> pre-candidate]")
        self._step = self.step_candidate
        self.trk.reset_votes()
        self.tick = self.tick_election
        self.lead = NONE
        self.state = StateType.StatePreCandidate

    def become_leader(self) -> None:
        if self.state == StateType.StateFollower:
            raise AssertionError("raft: invalid transition [follower -> leader]")
        self._step = self.step_leader
        self.reset(self.term)
        self.tick = self.tick_heartbeat
        self.lead = self.id
        self.state = StateType.StateLeader
        pr = self.trk.progress.get(self.id)
        if pr is not None:
            pr.become_replicate()
            pr.recent_active = True
        # Conservatively assume the log tail may hold an unapplied conf change.
        self.pending_conf_index = self.log.last_index()
        # Thesis §3.6.2: an entry of the new term lets earlier entries commit.
        self.append_entry([Entry()])

    # -- step --------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Thesis §3.3: every message first goes through the term comparison."""
        if m.term == 0:
            pass  # Local message (or a forwarded proposal / read index).
        elif m.term > self.term:
            if m.type in (M.MsgVote, M.MsgPreVote):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.check_quorum and self.lead != NONE and self.election_elapsed < self.election_timeout
                )
                if not force and in_lease:
                    # Thesis §4.2.3: a node hearing from a leader ignores disruptive votes.
                    return
            if m.type == M.MsgPreVote:
                pass  # Never bump our term for a pre-vote.
            elif m.type == M.MsgPreVoteResp and not m.reject:
                pass  # Our own pre-vote granted at a future term; term bumps if we win.
            elif m.type in (M.MsgApp, M.MsgHeartbeat, M.MsgSnap):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (M.MsgHeartbeat, M.MsgApp):
                # A stale leader (e.g. after a partition) would never learn about the new
                # term otherwise, since we ignore it; the response makes it step down.
                self.send(Message(type=M.MsgAppResp, to=m.frm, frm=self.id, term=self.term))
            elif m.type == M.MsgPreVote:
                self.send(
                    Message(
                        type=M.MsgPreVoteResp,
                        to=m.frm,
                        frm=self.id,
                        term=self.term,
                        reject=True,
                    )
                )
            return

        t = m.type
        if t == M.MsgHup:
            self.hup(CAMPAIGN_PRE_ELECTION if self.pre_vote else CAMPAIGN_ELECTION)
        elif t in (M.MsgVote, M.MsgPreVote):
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (t == M.MsgPreVote and m.term > self.term)
            )
            resp = M.MsgVoteResp if t == M.MsgVote else M.MsgPreVoteResp
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                # Reply with the message's term: a pre-vote's term is not ours yet.
                self.send(Message(type=resp, to=m.frm, frm=self.id, term=m.term))
                if t == M.MsgVote:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self.send(Message(type=resp, to=m.frm, frm=self.id, term=self.term, reject=True))
        else:
            self._step(m)

    # -- ticks -------------------------------------------------------------------

    def past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.past_election_timeout():
            self.election_elapsed = 0
            self.step(Message(type=M.MsgHup, frm=self.id))

    def tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(type=M.MsgCheckQuorum, frm=self.id))
            # The transfer did not finish within an election timeout: give up.
            if self.state == StateType.StateLeader and self.lead_transferee != NONE:
                self.abort_leader_transfer()
        if self.state != StateType.StateLeader:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(type=M.MsgBeat, frm=self.id))
