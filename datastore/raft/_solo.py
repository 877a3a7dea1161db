"""TEMPORARY single-voter RawNode stand-in, for debugging the driver only."""
from __future__ import annotations
from dataclasses import dataclass
from datastore.raft.types import *  # noqa

@dataclass
class Config:
    id: int
    storage: object
    applied: int = 0
    election_tick: int = 10
    heartbeat_tick: int = 1
    check_quorum: bool = True
    pre_vote: bool = True

@dataclass
class Status:
    hard_state: HardState

class RawNode:
    def __init__(self, cfg):
        self.cfg = cfg; self.id = cfg.id; self.st = cfg.storage
        hs, cs = self.st.initial_state()
        self.term = hs.term; self.commit = hs.commit; self.applied = cfg.applied
        self.unstable = []; self.lead = 0; self.state = StateType.StateFollower
        self.reads = []; self.soft_changed = False; self.hs_dirty = False; self.persisted = self.st.last_index()
        self.pending_reads = []
    def last(self): return self.unstable[-1].index if self.unstable else self.st.last_index()
    def campaign(self):
        self.term += 1; self.lead = self.id; self.state = StateType.StateLeader; self.soft_changed = True
        self.unstable.append(Entry(self.term, self.last() + 1)); self.hs_dirty = True
    def tick(self):
        if self.state != StateType.StateLeader: self.campaign()
    def propose(self, data):
        if self.state != StateType.StateLeader: raise ProposalDropped()
        self.unstable.append(Entry(self.term, self.last() + 1, EntryType.EntryNormal, data))
    def read_index(self, ctx): self.pending_reads.append(ctx)
    def has_ready(self):
        return bool(self.unstable or self.soft_changed or self.hs_dirty or self.commit > self.applied or (self.pending_reads and self.leader_committed()))
    def leader_committed(self):
        return self.state == StateType.StateLeader and self.commit >= 1 and self.st.term(self.commit) == self.term if self.commit else False
    def ready(self):
        ents = tuple(self.unstable)
        committed = tuple(self.st.entries(self.applied + 1, self.commit + 1)) if self.commit > self.applied else ()
        rs = ()
        if self.pending_reads and self.leader_committed():
            rs = tuple(ReadState(self.commit, c) for c in self.pending_reads)
        return Ready(soft_state=SoftState(self.lead, self.state) if self.soft_changed else None,
                     hard_state=HardState(self.term, self.id, self.commit) if (self.hs_dirty or ents or committed) else None,
                     entries=ents, committed_entries=committed, read_states=rs, must_sync=bool(ents) or self.hs_dirty)
    def advance(self, rd):
        self.soft_changed = False; self.hs_dirty = False
        if rd.read_states: self.pending_reads = self.pending_reads[len(rd.read_states):]
        if rd.committed_entries: self.applied = rd.committed_entries[-1].index
        if rd.entries:
            del self.unstable[:len(rd.entries)]
            new_commit = rd.entries[-1].index
            if new_commit > self.commit: self.commit = new_commit; self.hs_dirty = True
    def status(self): return Status(HardState(self.term, self.id, self.commit))
