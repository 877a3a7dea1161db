"""The follower's role function (etcd-io/raft ``raft.go``: ``stepFollower``) and the
handlers a follower (or a candidate that just learned of a leader) runs for MsgApp,
MsgHeartbeat and MsgSnap.
"""

from __future__ import annotations

from datastore.raft.base import RaftBase
from datastore.raft.election import CAMPAIGN_TRANSFER
from datastore.raft.types import NONE, Message, MsgType, ProposalDropped, ReadState, Snapshot, StateType

M = MsgType


class FollowerMixin(RaftBase):
    """``step_follower`` and the append/heartbeat/snapshot handlers; part of ``Raft``."""

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
