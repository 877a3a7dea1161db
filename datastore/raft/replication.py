"""Log replication from the leader (etcd-io/raft ``raft.go``: ``send*``, ``bcast*``,
``appendEntry``, ``maybeCommit``): what goes into ``msgs`` for each follower, and how the
commit index advances once entries are persisted.
"""

from __future__ import annotations

from datastore.raft.base import RaftBase
from datastore.raft.tracker import Progress
from datastore.raft.types import (
    CompactedError,
    Entry,
    Message,
    MsgType,
    SnapshotTemporarilyUnavailable,
    StateType,
    UnavailableError,
)

M = MsgType


class ReplicationMixin(RaftBase):
    """Sending MsgApp/MsgSnap/MsgHeartbeat and advancing the commit index; part of ``Raft``."""

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
