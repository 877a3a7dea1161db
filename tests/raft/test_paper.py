"""Tests named after claims of the Raft paper / thesis (as etcd's raft_paper_test.go)."""

from __future__ import annotations

import random

import pytest

from datastore.raft.confchange import encode_conf_change
from datastore.raft.rawnode import Config, RawNode
from datastore.raft.storage import MemoryStorage
from datastore.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    ReadState,
    StateType,
)


class Net:
    """A lossless network with manual delivery; ``cut`` drops traffic to/from nodes."""

    def __init__(self, n: int, **cfg: object) -> None:
        cs = ConfState(voters=tuple(range(1, n + 1)))
        self.st = {i: MemoryStorage(cs) for i in range(1, n + 1)}
        self.rn = {
            i: RawNode(Config(id=i, storage=self.st[i], rand=random.Random(i), **cfg))  # type: ignore[arg-type]
            for i in self.st
        }
        self.cut: set[int] = set()
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.st}
        self.reads: list[ReadState] = []

    def ready(self, i: int) -> list[Message]:
        rn, st = self.rn[i], self.st[i]
        if not rn.has_ready():
            return []
        rd = rn.ready()
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        self.applied[i].extend(rd.committed_entries)
        self.reads.extend(rd.read_states)
        rn.advance(rd)
        return list(rd.messages)

    def stabilize(self) -> None:
        for _ in range(100):
            msgs = [m for i in self.rn for m in self.ready(i)]
            if not msgs:
                return
            for m in msgs:
                if m.to in self.cut or m.frm in self.cut or m.to not in self.rn:
                    continue
                self.rn[m.to].step(m)

    def elect(self, i: int) -> None:
        self.rn[i].campaign()
        self.stabilize()
        assert self.rn[i].state == StateType.StateLeader

    def log(self, i: int) -> list[tuple[int, int]]:
        st = self.st[i]
        return [(e.index, e.term) for e in st.entries(st.first_index(), st.last_index() + 1)]


def test_election_safety_one_leader_per_term() -> None:
    """§5.2: at most one leader can be elected in a given term."""
    net = Net(5, pre_vote=False)
    net.rn[1].campaign()
    net.rn[2].campaign()
    net.stabilize()
    leaders = [i for i, rn in net.rn.items() if rn.state == StateType.StateLeader]
    assert len(leaders) <= 1
    assert all(rn.term == 1 for rn in net.rn.values())


def test_candidate_wins_with_majority_of_votes() -> None:
    """§5.2: a candidate wins if it receives votes from a majority of the full cluster."""
    net = Net(5)
    net.cut = {4, 5}
    net.elect(1)
    assert net.rn[1].term == 1


def test_candidate_without_majority_does_not_win() -> None:
    net = Net(5, pre_vote=False)
    net.cut = {3, 4, 5}
    net.rn[1].campaign()
    net.stabilize()
    assert net.rn[1].state == StateType.StateCandidate


def test_each_server_votes_once_per_term() -> None:
    """§5.2: each server votes for at most one candidate in a given term."""
    net = Net(3, pre_vote=False)
    rn = net.rn[3]
    rn.step(Message(type=MsgType.MsgVote, to=3, frm=1, term=1, index=0, log_term=0))
    rn.step(Message(type=MsgType.MsgVote, to=3, frm=2, term=1, index=0, log_term=0))
    rd = rn.ready()
    votes = [(m.to, m.reject) for m in rd.messages if m.type == MsgType.MsgVoteResp]
    assert votes == [(1, False), (2, True)]
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert rd.must_sync  # the vote is persisted before the response goes out


def test_election_restriction_rejects_stale_log() -> None:
    """§5.4.1: a voter denies its vote if its own log is more up-to-date."""
    net = Net(3, check_quorum=False)
    net.elect(1)
    net.rn[1].propose(b"x")
    net.stabilize()
    rn = net.rn[3]
    rn.step(Message(type=MsgType.MsgVote, to=3, frm=2, term=5, index=1, log_term=1))
    msgs = [m for m in rn.ready().messages if m.type == MsgType.MsgVoteResp]
    assert msgs and msgs[0].reject


def test_randomized_election_timeout_range() -> None:
    """§5.2: election timeouts are chosen randomly from [T, 2T)."""
    net = Net(1, election_tick=10)
    seen = set()
    for _ in range(200):
        net.rn[1].raft.reset_randomized_election_timeout()
        seen.add(net.rn[1].raft.randomized_election_timeout)
    assert min(seen) == 10 and max(seen) == 19


def test_follower_starts_election_after_timeout() -> None:
    """§5.2: a follower that hears nothing for an election timeout campaigns."""
    net = Net(3)
    for _ in range(20):
        net.rn[1].tick()
    assert net.rn[1].state in (StateType.StatePreCandidate, StateType.StateCandidate)
    net.stabilize()
    assert net.rn[1].state == StateType.StateLeader


def test_leader_append_only_and_log_matching() -> None:
    """§5.3: leaders never overwrite their log; logs then match on all servers."""
    net = Net(3)
    net.elect(1)
    for i in range(5):
        net.rn[1].propose(f"v{i}".encode())
    before = net.log(1)
    net.stabilize()
    assert net.log(1)[: len(before)] == before
    assert net.log(1) == net.log(2) == net.log(3)
    assert [e.data for e in net.applied[2] if e.data] == [f"v{i}".encode() for i in range(5)]


def test_follower_conflicting_entries_are_overwritten() -> None:
    """§5.3: the leader forces followers' logs to duplicate its own."""
    net = Net(3, check_quorum=False)
    net.elect(1)
    net.cut = {1}
    # Node 1 keeps appending alone; these entries never commit.
    net.rn[1].propose(b"lost1")
    net.rn[1].propose(b"lost2")
    net.stabilize()
    net.cut = {1}
    net.elect(2)
    net.rn[2].propose(b"kept")
    net.stabilize()
    net.cut = set()
    for _ in range(3):
        net.rn[2].tick()
    net.stabilize()
    assert net.log(1) == net.log(2) == net.log(3)
    assert b"lost1" not in [e.data for e in net.applied[1]]
    assert b"kept" in [e.data for e in net.applied[1]]


def test_leader_commits_only_current_term_entries_by_counting() -> None:
    """§5.4.2 (Figure 8): an old-term entry is not committed by counting replicas."""
    net = Net(3, pre_vote=False, check_quorum=False)
    net.elect(1)
    net.rn[1].propose(b"old")  # index 2, term 1
    for m in net.ready(1):
        if m.to == 2:
            net.rn[2].step(m)
    net.ready(2)  # node 2 persisted index 2, but its ack is lost
    net.cut = {3}
    net.rn[1].raft.become_follower(1, 0)  # e.g. it lost contact, then campaigns again
    net.rn[1].campaign()
    for m in net.ready(1):
        if m.to == 2:
            net.rn[2].step(m)
    for m in net.ready(2):
        net.rn[1].step(m)
    r1 = net.rn[1].raft
    assert net.rn[1].state == StateType.StateLeader and r1.term == 2
    # Node 2 acknowledges index 2 in term 2: a majority holds it, but it is from term 1.
    r1.step(Message(type=MsgType.MsgAppResp, to=1, frm=2, term=2, index=2))
    assert r1.trk.progress[2].match == 2
    assert r1.log.committed == 1
    net.stabilize()
    assert r1.log.committed == 3  # committed indirectly with the term-2 entry


def test_leader_counts_own_entries_only_once_persisted() -> None:
    """Thesis §10.2.1: the leader may send before persisting, but counts itself after."""
    net = Net(3)
    net.elect(1)
    net.cut = {2, 3}
    net.rn[1].propose(b"x")
    assert net.rn[1].raft.trk.progress[1].match == 1
    net.ready(1)
    assert net.rn[1].raft.trk.progress[1].match == 2


def test_stale_leader_steps_down_on_higher_term() -> None:
    """§5.1: a server that sees a higher term reverts to follower."""
    net = Net(3, check_quorum=False)
    net.elect(1)
    net.cut = {1}
    net.elect(2)
    net.cut = set()
    net.rn[1].tick()  # heartbeat at the old term reaches the others
    net.stabilize()
    assert net.rn[1].state == StateType.StateFollower
    assert net.rn[1].term == net.rn[2].term


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    """§6.2: a leader without contact from a quorum for an election timeout steps down."""
    net = Net(3)
    net.elect(1)
    net.cut = {2, 3}
    for _ in range(25):
        net.rn[1].tick()
        net.stabilize()
    assert net.rn[1].state == StateType.StateFollower


def test_pre_vote_does_not_disrupt_or_bump_term() -> None:
    """§9.6: a partitioned node's pre-vote neither succeeds nor raises terms."""
    net = Net(3)
    net.elect(1)
    net.cut = {3}
    for _ in range(60):
        net.rn[3].tick()
        net.stabilize()
    net.cut = set()
    net.stabilize()
    assert net.rn[3].term == 1 and net.rn[1].state == StateType.StateLeader


def test_read_index_needs_quorum_heartbeat() -> None:
    """§6.4: a read is served at the commit index once a quorum confirmed leadership."""
    net = Net(3)
    net.elect(1)
    net.rn[2].read_index(b"f")
    net.rn[1].read_index(b"l")
    msgs = net.ready(1)
    assert any(m.type == MsgType.MsgHeartbeat and m.context == b"l" for m in msgs)
    for m in msgs:
        net.rn[m.to].step(m)
    net.stabilize()
    reads = net.reads
    assert sorted(r.request_ctx for r in reads) == [b"f", b"l"]
    assert all(r.index == 1 for r in reads)


def test_proposal_forwarded_to_leader() -> None:
    net = Net(3)
    net.elect(1)
    net.rn[3].propose(b"fwd")
    net.stabilize()
    assert b"fwd" in [e.data for e in net.applied[1]]


def test_leader_transfer() -> None:
    """Thesis §3.10: the transferee is caught up, then told to campaign at once."""
    net = Net(3)
    net.elect(1)
    net.rn[1].propose(b"x")
    net.stabilize()
    net.rn[1].transfer_leader(3)
    with pytest.raises(ProposalDropped):
        net.rn[1].propose(b"during")
    net.stabilize()
    assert net.rn[3].state == StateType.StateLeader and net.rn[1].lead == 3


def test_leader_transfer_aborts_after_election_timeout() -> None:
    net = Net(3)
    net.elect(1)
    net.cut = {3}
    net.rn[1].transfer_leader(3)
    for _ in range(10):
        net.rn[1].tick()
        net.stabilize()
    assert net.rn[1].status().lead_transferee == 0
    net.rn[1].propose(b"ok")


def test_one_conf_change_at_a_time() -> None:
    """§4.1: a second change is refused (made a no-op) while one is pending."""
    net = Net(3)
    net.elect(1)
    cc1 = ConfChange(type=ConfChangeType.ConfChangeAddLearnerNode, node_id=4)
    cc2 = ConfChange(type=ConfChangeType.ConfChangeAddLearnerNode, node_id=5)
    net.rn[1].propose_conf_change(cc1)
    net.rn[1].propose_conf_change(cc2)
    ents = net.rn[1].raft.log.entries_unstable
    assert ents[-2].type == EntryType.EntryConfChange and ents[-2].data == encode_conf_change(cc1)
    assert ents[-1].type == EntryType.EntryNormal and ents[-1].data == b""


def test_learner_never_votes_toward_quorum_nor_campaigns() -> None:
    net = Net(1)
    net.elect(1)
    rn = net.rn[1]
    cs = rn.apply_conf_change(ConfChange(type=ConfChangeType.ConfChangeAddLearnerNode, node_id=2))
    assert cs == ConfState(voters=(1,), learners=(2,))
    rn.propose(b"x")
    net.stabilize()
    assert rn.raft.log.committed == 2  # the learner did not have to ack
    cs = rn.apply_conf_change(ConfChange(type=ConfChangeType.ConfChangeAddNode, node_id=2))
    assert cs == ConfState(voters=(1, 2))
    learner = RawNode(Config(id=3, storage=MemoryStorage(ConfState(voters=(1,), learners=(3,)))))
    for _ in range(100):
        learner.tick()
    assert learner.state == StateType.StateFollower and not learner.has_ready()
