"""A single voter: propose -> ready -> advance -> committed, and immediate ReadIndex."""

from __future__ import annotations

import random

import pytest

from datastore.raft.rawnode import Config, RawNode
from datastore.raft.storage import MemoryStorage
from datastore.raft.types import ConfState, HardState, ProposalDropped, StateType


def new_node() -> tuple[RawNode, MemoryStorage]:
    st = MemoryStorage(ConfState(voters=(1,)))
    return RawNode(Config(id=1, storage=st, rand=random.Random(1))), st


def handle(rn: RawNode, st: MemoryStorage):
    rd = rn.ready()
    st.append(rd.entries)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    rn.advance(rd)
    return rd


def test_propose_before_leader_is_dropped() -> None:
    rn, _ = new_node()
    with pytest.raises(ProposalDropped):
        rn.propose(b"x")


def test_single_voter_commits_after_persist() -> None:
    rn, st = new_node()
    rn.campaign()
    assert rn.state == StateType.StateLeader
    rd = handle(rn, st)
    assert [e.index for e in rd.entries] == [1]  # the leader's empty entry
    assert rd.must_sync and rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert rd.committed_entries == ()
    rd = handle(rn, st)
    assert [e.index for e in rd.committed_entries] == [1]
    assert rd.hard_state == HardState(term=1, vote=1, commit=1)
    assert not rn.has_ready()

    rn.propose(b"a")
    rn.propose(b"b")
    rd = rn.ready()
    assert [e.data for e in rd.entries] == [b"a", b"b"]
    assert rd.committed_entries == ()  # not persisted yet
    st.append(rd.entries)
    rn.advance(rd)
    rd = handle(rn, st)
    assert [e.data for e in rd.committed_entries] == [b"a", b"b"]
    assert rd.hard_state is not None and rd.hard_state.commit == 3
    assert not rd.must_sync  # only the commit index changed
    assert not rn.has_ready()
    assert rn.status().applied == 3


def test_read_index_immediate_on_single_voter() -> None:
    rn, st = new_node()
    rn.campaign()
    handle(rn, st)
    handle(rn, st)
    rn.read_index(b"ctx1")
    rn.read_index(b"ctx2")
    rd = handle(rn, st)
    assert [(r.index, r.request_ctx) for r in rd.read_states] == [(1, b"ctx1"), (1, b"ctx2")]


def test_read_index_waits_for_first_commit_of_term() -> None:
    rn, st = new_node()
    rn.campaign()
    rn.read_index(b"early")  # nothing committed in term 1 yet
    rd = handle(rn, st)
    assert rd.read_states == ()
    rd = handle(rn, st)
    assert [(r.index, r.request_ctx) for r in rd.read_states] == [(1, b"early")]


def test_restart_keeps_state() -> None:
    rn, st = new_node()
    rn.campaign()
    handle(rn, st)
    handle(rn, st)
    rn.propose(b"a")
    handle(rn, st)
    handle(rn, st)
    rn2 = RawNode(Config(id=1, storage=st, applied=2, rand=random.Random(2)))
    assert rn2.term == 1 and rn2.state == StateType.StateFollower
    assert not rn2.has_ready()
    for _ in range(40):
        rn2.tick()
    assert rn2.state == StateType.StateLeader and rn2.term == 2


def test_leads_alone_only_once_its_term_has_a_committed_entry() -> None:
    """The read fast path's condition: a freshly elected single voter must first commit
    an entry of its term (until then an older term's writes may be unapplied)."""
    rn, st = new_node()
    assert not rn.leads_alone()  # follower
    rn.campaign()
    assert rn.state == StateType.StateLeader
    assert not rn.leads_alone()  # leader, but its empty entry is not committed yet
    handle(rn, st)
    handle(rn, st)
    assert rn.leads_alone()


def test_leads_alone_is_false_with_other_voters() -> None:
    from tests.raft.test_paper import Net

    net = Net(3)
    net.elect(1)
    assert net.rn[1].state == StateType.StateLeader
    assert not any(rn.leads_alone() for rn in net.rn.values())
