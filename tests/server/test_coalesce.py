"""coalesce: a peer's queued messages lose only those a later message makes redundant."""

from __future__ import annotations

from datastore.raft.types import Entry, Message, MsgType
from datastore.server.coalesce import coalesce

M = MsgType


def ack(index: int, term: int = 2, reject: bool = False) -> Message:
    return Message(type=M.MsgAppResp, to=1, frm=2, term=term, index=index, reject=reject,
                   reject_hint=index - 1 if reject else 0)


def app(index: int, commit: int, n: int = 0, term: int = 2) -> Message:
    ents = tuple(Entry(term=term, index=index + 1 + i) for i in range(n))
    return Message(type=M.MsgApp, to=2, frm=1, term=term, index=index, commit=commit, entries=ents)


def test_only_the_highest_ack_of_a_term_is_sent() -> None:
    assert coalesce([ack(5), ack(7), ack(6)]) == [ack(7)]
    assert coalesce([ack(5), ack(7)]) == [ack(7)]


def test_rejections_and_other_terms_and_messages_stay() -> None:
    hb = Message(type=M.MsgHeartbeatResp, to=1, frm=2, term=2, context=b"r1")
    msgs = [ack(5, term=1), ack(4, reject=True), hb, ack(6), ack(3, reject=True)]
    assert coalesce(msgs) == msgs
    assert coalesce([ack(5), ack(9, term=3)]) == [ack(5), ack(9, term=3)]


def test_commit_only_appends_give_way_to_a_later_append() -> None:
    assert coalesce([app(10, 8), app(10, 10, n=3)]) == [app(10, 10, n=3)]
    assert coalesce([app(10, 8, n=2), app(12, 9), app(12, 10)]) == [app(10, 8, n=2), app(12, 10)]
    # the last one stays even without entries, and so does one of an older term
    assert coalesce([app(12, 10, term=1), app(12, 11)]) == [app(12, 10, term=1), app(12, 11)]
