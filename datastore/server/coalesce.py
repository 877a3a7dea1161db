"""Dropping raft messages that a later message to the same peer makes redundant.

The peer transport drains a peer's queue into one stream write; messages queued together
often repeat each other. Raft tolerates lost messages, and for two kinds a later one says
everything an earlier one said:

- a follower's accepting ``MsgAppResp``: the leader only needs the highest index acked in
  a term (acks are cumulative); rejections are never dropped (each carries a hint);
- a leader's ``MsgApp`` without entries (it only carries the commit index, or probes an
  up-to-date follower): a later ``MsgApp`` of the same term carries a commit index at least
  as high and is answered just the same.

Every other message, and the order of those kept, is left alone; the receiver sees a
valid (shorter) sequence of the same messages, so peers of any version understand it.
"""

from __future__ import annotations

from datastore.raft.types import Message, MsgType

_APP = MsgType.MsgApp
_APP_RESP = MsgType.MsgAppResp


def coalesce(msgs: list[Message]) -> list[Message]:
    """``msgs`` (all to one peer, in send order) without the superseded ones."""
    if len(msgs) < 2:
        return msgs
    best: dict[int, Message] = {}  # term -> its accepting MsgAppResp of the highest index
    for m in msgs:
        if m.type == _APP_RESP and not m.reject:
            b = best.get(m.term)
            if b is None or m.index > b.index:
                best[m.term] = m
    keep: list[Message] = []
    acked: set[int] = set()  # terms whose ack is already placed (walking back)
    app_term = -1  # the term of the latest MsgApp seen (walking back)
    for m in reversed(msgs):
        t = m.type
        if t == _APP_RESP and not m.reject:
            if m.term in acked:
                continue
            acked.add(m.term)
            m = best[m.term]  # the highest, in the place of the last one
        elif t == _APP:
            if not m.entries and m.term == app_term:
                continue
            app_term = max(app_term, m.term)
        keep.append(m)
    if len(keep) == len(msgs):
        return msgs
    keep.reverse()
    return keep
