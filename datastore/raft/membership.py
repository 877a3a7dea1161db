"""Applying membership changes to the tracker (etcd-io/raft ``raft.go``: ``applyConfChange``,
``switchToConfig``): one single-node change at a time (thesis §4.1). The encoding of a
``ConfChange`` in an entry lives in ``confchange.py``.
"""

from __future__ import annotations

from datastore.raft.base import RaftBase
from datastore.raft.tracker import Progress
from datastore.raft.types import NONE, ConfChange, ConfChangeType, ConfState, StateType


class MembershipMixin(RaftBase):
    """Switching the tracker to a new configuration; part of ``Raft``."""

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
