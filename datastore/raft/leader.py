"""The leader's role function (etcd-io/raft ``raft.go``: ``stepLeader``): proposals,
append responses, heartbeats and ReadIndex acknowledgements, snapshot status, CheckQuorum
and leadership transfer (thesis §3.10).
"""

from __future__ import annotations

from datastore.raft.base import RaftBase
from datastore.raft.quorum import VoteResult, vote_result
from datastore.raft.tracker import Progress, StateProbe, StateReplicate, StateSnapshot
from datastore.raft.types import NONE, Entry, EntryType, Message, MsgType, ProposalDropped

M = MsgType


class LeaderMixin(RaftBase):
    """``step_leader`` and its handlers; part of ``Raft``."""

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
