"""The Raft state machine (etcd-io/raft ``raft.go``).

Rule 1: every role transition lives in this file. Rule 2: nothing here knows about
clocks, sockets, disks or asyncio; time is ``tick()``, randomness is ``Config.rand`` and
output is appended to ``msgs`` / ``read_states`` for ``RawNode.ready()`` to collect.

Roles are swapped functions (``step_*``, ``tick_*``), not subclasses: ``step()`` runs the
term handling shared by all roles, then the current role's ``_step``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from datastore.raft.log import RaftLog
from datastore.raft.quorum import VoteResult, vote_result
from datastore.raft.read_only import ReadOnly
from datastore.raft.storage import Storage
from datastore.raft.tracker import (
    Progress,
    ProgressTracker,
    StateProbe,
    StateReplicate,
    StateSnapshot,
)
from datastore.raft.types import (
    NONE,
    CompactedError,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    ReadState,
    Snapshot,
    SnapshotTemporarilyUnavailable,
    SoftState,
    StateType,
    UnavailableError,
)

# Context of MsgVote for a leadership transfer: lets the vote through a follower's
# CheckQuorum lease (thesis §3.10).
CAMPAIGN_TRANSFER = b"CampaignTransfer"
CAMPAIGN_PRE_ELECTION = b"CampaignPreElection"
CAMPAIGN_ELECTION = b"CampaignElection"

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


class Raft:
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

    # -- state snapshots ----------------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(lead=self.lead, raft_state=self.state)

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def promotable(self) -> bool:
        """Only voters campaign; learners and removed nodes never do."""
        return self.id in self.trk.voters

    # -- sending ------------------------------------------------------------------------

    def send(self, m: Message) -> None:
        self.msgs.append(m)

    def maybe_send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send the entries ``to`` is missing (or a snapshot); False if nothing was sent."""
        pr = self.trk.progress[to]
        if pr.is_paused():
            return False
        log = self.log
        prev = pr.next - 1
        try:
            prev_term = log.term(prev)
            ents = log.entries_from(pr.next, self.max_msg_size)
        except (CompactedError, UnavailableError):
            return self.maybe_send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        self.send(
            Message(
                type=M.MsgApp,
                to=to,
                frm=self.id,
                term=self.term,
                index=prev,
                log_term=prev_term,
                entries=tuple(ents),
                commit=log.committed,
            )
        )
        pr.sent_entries(ents[-1].index if ents else None)
        return True

    def maybe_send_snapshot(self, to: int, pr: Progress) -> bool:
        """Thesis §5.3: a follower too far behind is sent the latest snapshot."""
        if not pr.recent_active:
            return False  # Don't ship a snapshot to a node that seems down.
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        if snap.is_empty:
            raise AssertionError("raft: need non-empty snapshot")
        pr.become_snapshot(snap.metadata.index)
        self.send(Message(type=M.MsgSnap, to=to, frm=self.id, term=self.term, snapshot=snap))
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        # Never tell a follower to commit past what it is known to hold.
        commit = min(self.trk.progress[to].match, self.log.committed)
        self.send(
            Message(
                type=M.MsgHeartbeat,
                to=to,
                frm=self.id,
                term=self.term,
                commit=commit,
                context=ctx,
            )
        )

    def bcast_append(self) -> None:
        for pid in self.trk.progress:
            if pid != self.id:
                self.maybe_send_append(pid)

    def bcast_heartbeat(self) -> None:
        ctx = self.read_only.last_pending_request_ctx()
        for pid in self.trk.progress:
            if pid != self.id:
                self.send_heartbeat(pid, ctx)

    # -- role transitions ---------------------------------------------------------------

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

    # -- elections ----------------------------------------------------------------------

    def has_unapplied_conf_change(self) -> bool:
        log = self.log
        lo, hi = log.applied + 1, log.committed + 1
        if lo >= hi:
            return False
        try:
            ents = log.slice(lo, hi)
        except (CompactedError, UnavailableError):
            return False
        return any(e.type == EntryType.EntryConfChange for e in ents)

    def hup(self, campaign_type: bytes) -> None:
        if self.state == StateType.StateLeader or not self.promotable():
            return
        if self.has_unapplied_conf_change():
            # The config may change under us; wait until it is applied.
            return
        self.campaign(campaign_type)

    def campaign(self, campaign_type: bytes) -> None:
        if campaign_type == CAMPAIGN_PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = M.MsgPreVote
            term = self.term + 1  # The term we would campaign with.
        else:
            self.become_candidate()
            vote_msg = M.MsgVote
            term = self.term
        if self.poll(self.id, True) == VoteResult.VoteWon:
            # Single voter: win at once.
            if campaign_type == CAMPAIGN_PRE_ELECTION:
                self.campaign(CAMPAIGN_ELECTION)
            else:
                self.become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if campaign_type == CAMPAIGN_TRANSFER else b""
        last = self.log.last_index()
        last_term = self.log.last_term()
        for pid in sorted(self.trk.voters):
            if pid == self.id:
                continue
            self.send(
                Message(
                    type=vote_msg,
                    to=pid,
                    frm=self.id,
                    term=term,
                    index=last,
                    log_term=last_term,
                    context=ctx,
                )
            )

    def poll(self, node_id: int, granted: bool) -> VoteResult:
        self.trk.record_vote(node_id, granted)
        return self.trk.tally_votes()

    # -- step ---------------------------------------------------------------------------

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

    def step_leader(self, m: Message) -> None:
        t = m.type
        if t == M.MsgBeat:
            self.bcast_heartbeat()
            return
        if t == M.MsgCheckQuorum:
            if not self.trk.quorum_active(self.id):
                # Thesis §6.2: step down without contact from a quorum.
                self.become_follower(self.term, NONE)
                return
            for pid, pr in self.trk.progress.items():
                if pid != self.id:
                    pr.recent_active = False
            return
        if t == M.MsgProp:
            self._leader_propose(m)
            return
        if t == M.MsgReadIndex:
            if not self.committed_entry_in_current_term():
                # Thesis §6.4 step 1: wait until an entry of our term committed.
                self.pending_read_index.append(m)
                return
            self.send_read_index_response(m)
            return

        pr = self.trk.progress.get(m.frm)
        if pr is None:
            return
        if t == M.MsgAppResp:
            self._handle_app_resp(m, pr)
        elif t == M.MsgHeartbeatResp:
            pr.recent_active = True
            pr.msg_app_flow_paused = False
            if pr.match < self.log.last_index() or pr.state == StateProbe:
                self.maybe_send_append(m.frm)
            if not m.context:
                return
            acks = self.read_only.recv_ack(m.frm, m.context)
            if acks is None or vote_result(self.trk.voters, acks) != VoteResult.VoteWon:
                return
            for rs in self.read_only.advance(m.context):
                self.respond_read_index(rs.req, rs.index)
        elif t == M.MsgSnapStatus:
            if pr.state != StateSnapshot:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for a heartbeat response before probing again.
            pr.msg_app_flow_paused = True
        elif t == M.MsgUnreachable:
            if pr.state == StateReplicate:
                pr.become_probe()
        elif t == M.MsgTransferLeader:
            self._handle_transfer_leader(m, pr)

    def _leader_propose(self, m: Message) -> None:
        if not m.entries:
            raise AssertionError("raft: stepped empty MsgProp")
        if self.id not in self.trk.progress:
            # We were removed from the configuration while leader.
            raise ProposalDropped("raft: leader is not a member")
        if self.lead_transferee != NONE:
            raise ProposalDropped("raft: leader transfer in progress")
        ents = list(m.entries)
        for i, e in enumerate(ents):
            if e.type == EntryType.EntryConfChange:
                if self.pending_conf_index > self.log.applied:
                    # Thesis §4.1: one membership change at a time; keep the slot as a
                    # no-op so the proposer's wait resolves (etcd does the same).
                    ents[i] = Entry(type=EntryType.EntryNormal)
                else:
                    self.pending_conf_index = self.log.last_index() + i + 1
        self.append_entry(ents)
        self.bcast_append()

    def _handle_app_resp(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                # Skip every entry of ours whose term is above the follower's (thesis §5.3).
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == StateReplicate:
                    pr.become_probe()
                self.maybe_send_append(m.frm)
            return
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == StateProbe:
            pr.become_replicate()
        elif pr.state == StateSnapshot and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == StateReplicate:
            pr.inflights.free_le(m.index)
            if not pr.inflights.full():
                pr.msg_app_flow_paused = False
        if self.maybe_commit():
            self.on_commit_advanced()
            self.bcast_append()
        elif old_paused:
            self.maybe_send_append(m.frm)
        # Keep the pipe full: several MsgApp may go out per acknowledgement.
        while self.maybe_send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self.send_timeout_now(m.frm)

    def _handle_transfer_leader(self, m: Message, pr: Progress) -> None:
        """Thesis §3.10: catch the transferee up, then tell it to campaign at once."""
        if pr.is_learner:
            return
        transferee = m.frm
        if self.lead_transferee != NONE:
            if self.lead_transferee == transferee:
                return
            self.abort_leader_transfer()
        if transferee == self.id:
            return
        # Abort if it does not complete within an election timeout (tick_heartbeat).
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.log.last_index():
            self.send_timeout_now(transferee)
        else:
            self.maybe_send_append(transferee)

    def send_timeout_now(self, to: int) -> None:
        self.send(Message(type=M.MsgTimeoutNow, to=to, frm=self.id, term=self.term))

    def abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    def step_candidate(self, m: Message) -> None:
        """Shared by candidate and pre-candidate; only the vote response type differs."""
        t = m.type
        my_vote_resp = M.MsgPreVoteResp if self.state == StateType.StatePreCandidate else M.MsgVoteResp
        if t == M.MsgProp:
            raise ProposalDropped("raft: no leader")
        if t == M.MsgApp:
            self.become_follower(m.term, m.frm)
            self.handle_append_entries(m)
        elif t == M.MsgHeartbeat:
            self.become_follower(m.term, m.frm)
            self.handle_heartbeat(m)
        elif t == M.MsgSnap:
            self.become_follower(m.term, m.frm)
            self.handle_snapshot(m)
        elif t == my_vote_resp:
            res = self.poll(m.frm, not m.reject)
            if res == VoteResult.VoteWon:
                if self.state == StateType.StatePreCandidate:
                    self.campaign(CAMPAIGN_ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res == VoteResult.VoteLost:
                # A MsgPreVoteResp with a higher term was already handled in step().
                self.become_follower(self.term, NONE)
        elif t == M.MsgReadIndex:
            raise ProposalDropped("raft: no leader")

    def step_follower(self, m: Message) -> None:
        t = m.type
        if t == M.MsgProp:
            if self.lead == NONE:
                raise ProposalDropped("raft: no leader")
            self.send(Message(type=M.MsgProp, to=self.lead, frm=self.id, entries=m.entries))
        elif t == M.MsgApp:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_append_entries(m)
        elif t == M.MsgHeartbeat:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_heartbeat(m)
        elif t == M.MsgSnap:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_snapshot(m)
        elif t == M.MsgTransferLeader:
            if self.lead == NONE:
                raise ProposalDropped("raft: no leader")
            self.send(Message(type=M.MsgTransferLeader, to=self.lead, frm=m.frm))
        elif t == M.MsgTimeoutNow:
            # Thesis §3.10: skip pre-vote, the old leader asked us to take over.
            self.hup(CAMPAIGN_TRANSFER)
        elif t == M.MsgReadIndex:
            if self.lead == NONE:
                raise ProposalDropped("raft: no leader")
            self.send(Message(type=M.MsgReadIndex, to=self.lead, frm=self.id, entries=m.entries))
        elif t == M.MsgReadIndexResp:
            if len(m.entries) != 1:
                return
            self.read_states.append(ReadState(index=m.index, request_ctx=m.entries[0].data))

    # -- follower handlers --------------------------------------------------------------

    def handle_append_entries(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self.send(
                Message(
                    type=M.MsgAppResp,
                    to=m.frm,
                    frm=self.id,
                    term=self.term,
                    index=log.committed,
                )
            )
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self.send(Message(type=M.MsgAppResp, to=m.frm, frm=self.id, term=self.term, index=last_new))
            return
        hint_index = min(m.index, log.last_index())
        hint_index, hint_term = log.find_conflict_by_term(hint_index, m.log_term)
        self.send(
            Message(
                type=M.MsgAppResp,
                to=m.frm,
                frm=self.id,
                term=self.term,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self.send(
            Message(
                type=M.MsgHeartbeatResp,
                to=m.frm,
                frm=self.id,
                term=self.term,
                context=m.context,
            )
        )

    def handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        index = self.log.last_index() if self.restore(snap) else self.log.committed
        self.send(Message(type=M.MsgAppResp, to=m.frm, frm=self.id, term=self.term, index=index))

    def restore(self, snap: Snapshot) -> bool:
        """Install a leader's snapshot unless our log already covers it (thesis §5.2)."""
        meta = snap.metadata
        if meta.index <= self.log.committed:
            return False
        if self.state != StateType.StateFollower:
            self.become_follower(self.term + 1, NONE)  # Defensive, as etcd.
            return False
        cs = meta.conf_state
        if self.id not in cs.voters and self.id not in cs.learners:
            return False  # Not for us (we would not be in its config).
        if self.log.match_term(meta.index, meta.term):
            # We have the entries: just fast-forward the commit index.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snap)
        self._apply_conf_state(cs)
        return True

    # -- commit, persistence, reads -----------------------------------------------------

    def append_entry(self, es: list[Entry]) -> None:
        li = self.log.last_index()
        term = self.term
        ents = [Entry(term=term, index=li + i + 1, type=e.type, data=e.data) for i, e in enumerate(es)]
        # Not counted toward our own match here: only once persisted (on_persisted).
        self.log.append(ents)

    def maybe_commit(self) -> bool:
        return self.log.maybe_commit(self.trk.committed(), self.term)

    def on_persisted(self, index: int, term: int) -> None:
        """The driver persisted entries through ``index``/``term`` (``RawNode.advance``)."""
        self.log.stable_to(index, term)
        if self.state != StateType.StateLeader:
            return
        pr = self.trk.progress.get(self.id)
        if pr is None:
            return
        if pr.maybe_update(self.log.stable_last_index()) and self.maybe_commit():
            self.on_commit_advanced()
            self.bcast_append()

    def committed_entry_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def on_commit_advanced(self) -> None:
        if self.pending_read_index and self.committed_entry_in_current_term():
            pending, self.pending_read_index = self.pending_read_index, []
            for m in pending:
                self.send_read_index_response(m)

    def send_read_index_response(self, m: Message) -> None:
        """Thesis §6.4: record commit now, confirm leadership with a heartbeat round."""
        if self.trk.is_singleton() and self.id in self.trk.voters:
            self.respond_read_index(m, self.log.committed)
            return
        ctx = m.entries[0].data
        self.read_only.add_request(self.log.committed, m)
        self.read_only.recv_ack(self.id, ctx)
        for pid in self.trk.progress:
            if pid != self.id:
                self.send_heartbeat(pid, ctx)

    def respond_read_index(self, req: Message, index: int) -> None:
        if req.frm == NONE or req.frm == self.id:
            self.read_states.append(ReadState(index=index, request_ctx=req.entries[0].data))
            return
        self.send(
            Message(
                type=M.MsgReadIndexResp,
                to=req.frm,
                frm=self.id,
                term=self.term,
                index=index,
                entries=req.entries,
            )
        )

    # -- ticks --------------------------------------------------------------------------

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

    # -- membership ---------------------------------------------------------------------

    def _apply_conf_state(self, cs: ConfState) -> None:
        trk = self.trk
        trk.voters = set(cs.voters)
        trk.learners = set(cs.learners)
        overlap = trk.voters & trk.learners
        if overlap:
            raise ValueError(f"raft: {sorted(overlap)} both voter and learner")
        last = self.log.last_index()
        old = trk.progress
        trk.progress = {}
        for pid in (*cs.voters, *cs.learners):
            pr = old.get(pid) or Progress(0, last + 1, trk.max_inflight, False)
            pr.is_learner = pid in trk.learners
            trk.progress[pid] = pr
        self.is_learner = self.id in trk.learners

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply one committed single-node change (thesis §4.1); returns the new config."""
        trk = self.trk
        nid = cc.node_id
        voters, learners = set(trk.voters), set(trk.learners)
        if cc.type == ConfChangeType.ConfChangeAddNode:
            learners.discard(nid)  # Promotes a learner.
            voters.add(nid)
        elif cc.type == ConfChangeType.ConfChangeAddLearnerNode:
            voters.discard(nid)  # Demotes a voter.
            learners.add(nid)
        elif cc.type == ConfChangeType.ConfChangeRemoveNode:
            voters.discard(nid)
            learners.discard(nid)
        elif cc.type == ConfChangeType.ConfChangeUpdateNode:
            return trk.conf_state()
        else:
            raise ValueError(f"raft: unknown conf change type {cc.type}")
        is_new = nid not in trk.progress
        cs = ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))
        self._apply_conf_state(cs)
        if is_new and nid in trk.progress:
            # A freshly added node counts as active so CheckQuorum does not fire at once.
            trk.progress[nid].recent_active = True
        self._after_conf_change()
        return cs

    def _after_conf_change(self) -> None:
        if self.state != StateType.StateLeader:
            return
        if self.id not in self.trk.voters:
            # We were removed (or demoted): hand over to a caught-up voter, then step down.
            last = self.log.last_index()
            for pid in sorted(self.trk.voters):
                if self.trk.progress[pid].match == last:
                    self.send_timeout_now(pid)
                    break
            self.become_follower(self.term, NONE)
            return
        if self.maybe_commit():
            self.on_commit_advanced()
            self.bcast_append()
        else:
            for pid in self.trk.progress:
                if pid != self.id:
                    self.maybe_send_append(pid, send_if_empty=False)
        if self.lead_transferee != NONE and self.lead_transferee not in self.trk.voters:
            self.abort_leader_transfer()
