"""The leader's side of ReadIndex (thesis §6.4; etcd-io/raft ``raft.go``:
``sendMsgReadIndexResponse``): hold requests until an entry of the current term commits,
then confirm leadership with a heartbeat round tracked by ``read_only.ReadOnly``.
"""

from __future__ import annotations

from datastore.raft.base import RaftBase
from datastore.raft.types import NONE, Message, MsgType, ReadState

M = MsgType


class ReadIndexMixin(RaftBase):
    """Answering MsgReadIndex; part of ``Raft``."""

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
