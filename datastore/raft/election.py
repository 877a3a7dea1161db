"""Elections (etcd-io/raft ``raft.go``: ``hup``, ``campaign``, ``poll``, ``stepCandidate``):
thesis §3.4 plus pre-vote (§9.6) and leadership transfer's forced campaign (§3.10).

The ``become_*`` transitions themselves stay in ``core.py``; vote *requests* are answered
by ``Raft.step`` for every role.
"""

from __future__ import annotations

from datastore.raft.base import RaftBase
from datastore.raft.quorum import VoteResult
from datastore.raft.types import (
    NONE,
    CompactedError,
    EntryType,
    Message,
    MsgType,
    ProposalDropped,
    StateType,
    UnavailableError,
)

M = MsgType

# Context of MsgVote for a leadership transfer: lets the vote through a follower's
# CheckQuorum lease (thesis §3.10).
CAMPAIGN_TRANSFER = b"CampaignTransfer"
CAMPAIGN_PRE_ELECTION = b"CampaignPreElection"
CAMPAIGN_ELECTION = b"CampaignElection"


class ElectionMixin(RaftBase):
    """Campaigning and counting votes; part of ``Raft``."""

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
