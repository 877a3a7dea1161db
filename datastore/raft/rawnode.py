"""The thread-unsafe public API of the consensus core (etcd-io/raft ``rawnode.go``).

Driver loop (see ``Ready``'s docstring for the ordering contract)::

    while rn.has_ready():
        rd = rn.ready()
        persist(rd.snapshot, rd.entries, rd.hard_state)   # fsync if rd.must_sync
        send(rd.messages)
        apply(rd.snapshot, rd.committed_entries)          # conf changes -> apply_conf_change
        serve_reads(rd.read_states)
        rn.advance(rd)

``step``/``tick``/``propose`` may be called between ``ready()`` and ``advance()``; a
second ``ready()`` before ``advance()`` is not supported.
"""

from __future__ import annotations

from datastore.raft.confchange import decode_conf_change, encode_conf_change
from datastore.raft.core import Config, Raft
from datastore.raft.types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    ProgressStatus,
    ProposalDropped,
    Ready,
    StateType,
    Status,
    StepLocalMsg,
    StepPeerNotFound,
)

__all__ = ["Config", "RawNode", "decode_conf_change", "encode_conf_change"]

_LOCAL_MSGS = frozenset(
    {
        MsgType.MsgHup,
        MsgType.MsgBeat,
        MsgType.MsgUnreachable,
        MsgType.MsgSnapStatus,
        MsgType.MsgCheckQuorum,
    }
)
_RESPONSE_MSGS = frozenset(
    {
        MsgType.MsgAppResp,
        MsgType.MsgVoteResp,
        MsgType.MsgHeartbeatResp,
        MsgType.MsgUnreachable,
        MsgType.MsgReadIndexResp,
        MsgType.MsgPreVoteResp,
    }
)


def is_local_msg(t: MsgType) -> bool:
    return t in _LOCAL_MSGS


def is_response_msg(t: MsgType) -> bool:
    return t in _RESPONSE_MSGS


class RawNode:
    """One Raft node without I/O. Not thread-safe; owns no clock, socket or task."""

    def __init__(self, config: Config) -> None:
        self.raft = Raft(config)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()

    # -- convenience --------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self.raft.id

    @property
    def lead(self) -> int:
        return self.raft.lead

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def state(self) -> StateType:
        return self.raft.state

    # -- inputs -------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, CheckQuorum)."""
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (with pre-vote if configured)."""
        self.raft.step(Message(type=MsgType.MsgHup, frm=self.raft.id))

    def leads_alone(self) -> bool:
        """Leader and the only voter, with an entry of its term committed: every write
        acknowledged so far is applied here, and no other member can lead without this
        one's vote, so reading local state now is linearizable (no ReadIndex round)."""
        r = self.raft
        return (r.state == StateType.StateLeader and r.trk.is_singleton()
                and r.id in r.trk.voters and r.committed_entry_in_current_term())

    def propose(self, data: bytes) -> None:
        """Propose a normal entry; raises ProposalDropped if it cannot be accepted now.

        Acceptance does not mean commitment: the entry may still be lost on a leader
        change, so the caller must match committed entries back to its proposals.
        """
        self.raft.step(Message(type=MsgType.MsgProp, frm=self.raft.id, entries=(Entry(data=data),)))

    def propose_many(self, datas: list[bytes]) -> None:
        """Propose several normal entries as one message: one append and one broadcast
        for the batch instead of one per entry. All are accepted or all dropped."""
        if datas:
            self.raft.step(Message(type=MsgType.MsgProp, frm=self.raft.id,
                                   entries=tuple(Entry(data=d) for d in datas)))

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a membership change, encoded with ``encode_conf_change``.

        While another change is pending (not yet applied) the leader replaces it with an
        empty normal entry (etcd's pendingConfIndex rule), so it commits as a no-op.
        """
        self.raft.step(
            Message(
                type=MsgType.MsgProp,
                frm=self.raft.id,
                entries=(Entry(type=EntryType.EntryConfChange, data=encode_conf_change(cc)),),
            )
        )

    def step(self, m: Message) -> None:
        """Feed a message received from a peer."""
        if is_local_msg(m.type):
            raise StepLocalMsg(f"raft: cannot step local message {m.type.name}")
        if is_response_msg(m.type) and m.frm not in self.raft.trk.progress:
            raise StepPeerNotFound(f"raft: response from unknown peer {m.frm}")
        try:
            self.raft.step(m)
        except ProposalDropped:
            # A forwarded proposal/read the leader cannot take: the origin times out and
            # retries, as in etcd. Local callers get the error via propose()/read_index().
            if m.frm == self.raft.id or m.frm == NONE:
                raise

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point; a ReadState with ``ctx`` appears in a later
        Ready. Raises ProposalDropped when no leader is known."""
        self.raft.step(Message(type=MsgType.MsgReadIndex, frm=self.raft.id, entries=(Entry(data=ctx),)))

    def transfer_leader(self, transferee: int) -> None:
        """Ask the leader to hand leadership to ``transferee`` (thesis §3.10)."""
        self.raft.step(Message(type=MsgType.MsgTransferLeader, frm=transferee))

    def report_unreachable(self, node_id: int) -> None:
        self.raft.step(Message(type=MsgType.MsgUnreachable, frm=node_id))

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        """Outcome of sending a MsgSnap to ``node_id``."""
        self.raft.step(Message(type=MsgType.MsgSnapStatus, frm=node_id, reject=not ok))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf change entry's change; call it for every EntryConfChange
        in committed_entries, in order. Returns the ConfState to persist with the applied
        index."""
        return self.raft.apply_conf_change(cc)

    # -- outputs ------------------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self.raft
        log = r.log
        if r.msgs or r.read_states:
            return True
        if log.in_progress < log.offset + len(log.entries_unstable):
            return True
        if log.unstable_snapshot is not None and not log.snapshot_in_progress:
            return True
        if log.has_next_committed_ents():
            return True
        if r.soft_state() != self._prev_soft:
            return True
        hs = r.hard_state()
        return hs != self._prev_hard

    def ready(self) -> Ready:
        """Collect outstanding work; must be passed to ``advance`` once handled."""
        r = self.raft
        log = r.log
        ss = r.soft_state()
        hs = r.hard_state()
        entries = log.unstable_to_persist()
        snap = None
        if log.unstable_snapshot is not None and not log.snapshot_in_progress:
            snap = log.unstable_snapshot
        committed = log.next_committed_ents()
        prev = self._prev_hard
        must_sync = bool(entries) or snap is not None or hs.term != prev.term or (hs.vote != prev.vote)
        rd = Ready(
            soft_state=ss if ss != self._prev_soft else None,
            hard_state=hs if hs != prev else None,
            entries=tuple(entries),
            snapshot=snap,
            committed_entries=tuple(committed),
            messages=tuple(r.msgs),
            read_states=tuple(r.read_states),
            must_sync=must_sync,
        )
        # Accept: these are now the driver's responsibility.
        r.msgs = []
        r.read_states = []
        self._prev_soft = ss
        self._prev_hard = hs
        log.accept_unstable()
        if snap is not None and log.applying < snap.metadata.index:
            log.applying = snap.metadata.index
        if committed:
            log.applying = committed[-1].index
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``."""
        r = self.raft
        log = r.log
        if rd.snapshot is not None:
            log.stable_snap_to(rd.snapshot.metadata.index)
            log.applied_to(rd.snapshot.metadata.index)
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
        if rd.entries:
            last = rd.entries[-1]
            r.on_persisted(last.index, last.term)
        elif rd.snapshot is not None and r.state == StateType.StateLeader:
            r.on_persisted(rd.snapshot.metadata.index, rd.snapshot.metadata.term)

    def status(self) -> Status:
        r = self.raft
        progress = {}
        if r.state == StateType.StateLeader:
            for pid, pr in r.trk.progress.items():
                progress[pid] = ProgressStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state,
                    recent_active=pr.recent_active,
                    is_learner=pr.is_learner,
                    pending_snapshot=pr.pending_snapshot,
                    inflight=pr.inflights.count(),
                )
        return Status(
            id=r.id,
            hard_state=r.hard_state(),
            soft_state=r.soft_state(),
            applied=r.log.applied,
            lead_transferee=r.lead_transferee,
            progress=progress,
        )

    def conf_state(self) -> ConfState:
        return self.raft.trk.conf_state()
