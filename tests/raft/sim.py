"""Deterministic in-process simulation of a Raft cluster built from ``RawNode``s.

A seeded network with loss, duplication, reordering and partitions; nodes crash (losing
everything not yet persisted) and restart on the same ``MemoryStorage``. Safety is
checked after every step; ``heal_and_check_liveness`` checks progress after the chaos.
Every failure message starts with the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from datastore.raft.confchange import decode_conf_change
from datastore.raft.rawnode import Config, RawNode
from datastore.raft.storage import MemoryStorage
from datastore.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    ProposalDropped,
    StateType,
    StepPeerNotFound,
)


class SimFailure(AssertionError):
    pass


@dataclass
class SimNode:
    id: int
    storage: MemoryStorage
    rn: RawNode | None = None
    # The "state machine": applied index plus a running digest of applied entries.
    applied: int = 0
    digest: int = 0
    group: int = 0  # partition group


@dataclass
class SimParams:
    voters: int = 3
    spares: int = 0  # nodes outside the initial config, for membership changes
    steps: int = 600
    loss: float = 0.05
    dup: float = 0.03
    crash: float = 0.004
    partition: float = 0.01
    compact_every: int = 0  # 0: never compact
    transfer: float = 0.0
    conf_change: float = 0.0
    election_tick: int = 10
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 4
    log_matching_every: int = 50
    counters: dict[str, int] = field(default_factory=dict)


class Sim:
    def __init__(self, seed: int, p: SimParams) -> None:
        self.seed = seed
        self.p = p
        self.rng = random.Random(seed)
        ids = list(range(1, p.voters + p.spares + 1))
        cs = ConfState(voters=tuple(range(1, p.voters + 1)))
        self.nodes: dict[int, SimNode] = {}
        for i in ids:
            st = MemoryStorage(cs if i <= p.voters else ConfState())
            self.nodes[i] = SimNode(id=i, storage=st)
            self.start(i)
        self.net: list[Message] = []
        # Global truth: every entry applied anywhere, by index (1-based), and the digest
        # of the state machine after applying it.
        self.committed: list[Entry] = []
        self.digests: list[int] = [0]
        self.leader_of_term: dict[int, int] = {}
        self.leader_tail: dict[tuple[int, int], tuple[int, int]] = {}
        self.read_floor: dict[bytes, int] = {}
        self.proposed = 0
        self.ever_member: set[int] = set(cs.voters)
        self.steps_done = 0
        self.reads = 0

    # -- plumbing -----------------------------------------------------------------------

    def fail(self, msg: str) -> SimFailure:
        return SimFailure(f"seed={self.seed} step={self.steps_done}: {msg}")

    def count(self, what: str) -> None:
        self.p.counters[what] = self.p.counters.get(what, 0) + 1

    def start(self, i: int) -> None:
        n = self.nodes[i]
        cfg = Config(
            id=i,
            storage=n.storage,
            applied=n.applied,
            election_tick=self.p.election_tick,
            max_size_per_msg=self.p.max_size_per_msg,
            max_inflight_msgs=self.p.max_inflight_msgs,
            rand=random.Random(self.rng.random()),
        )
        n.rn = RawNode(cfg)

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.rn is not None]

    def process_ready(self, n: SimNode) -> None:
        rn = n.rn
        assert rn is not None
        if not rn.has_ready():
            return
        rd = rn.ready()
        st = n.storage
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
            idx = rd.snapshot.metadata.index
            want = self.digests[idx] if idx < len(self.digests) else None
            got = int(rd.snapshot.data.decode())
            if want != got:
                raise self.fail(f"node {n.id} snapshot {idx} digest {got} != {want}")
            n.applied, n.digest = idx, got
            self.count("snapshots_applied")
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        self.net.extend(rd.messages)
        for e in rd.committed_entries:
            self.apply(n, e)
        for rs in rd.read_states:
            floor = self.read_floor.pop(rs.request_ctx, None)
            if floor is not None and rs.index < floor:
                raise self.fail(f"node {n.id} read {rs} below commit {floor} at request")
            self.reads += 1
        rn.advance(rd)
        if self.p.compact_every and n.applied - st.first_index() + 1 > self.p.compact_every:
            self.compact(n)

    def apply(self, n: SimNode, e: Entry) -> None:
        if e.index != n.applied + 1:
            raise self.fail(f"node {n.id} applied {e.index} after {n.applied}")
        if e.index <= len(self.committed):
            want = self.committed[e.index - 1]
            if want != e:
                raise self.fail(f"node {n.id} applied {e} but {want} was applied elsewhere")
        else:
            self.committed.append(e)
            self.digests.append(hash((self.digests[-1], e.term, e.type, e.data)))
        n.applied = e.index
        n.digest = self.digests[e.index]
        if e.type == EntryType.EntryConfChange:
            assert n.rn is not None
            cs = n.rn.apply_conf_change(decode_conf_change(e.data))
            n.storage.set_conf_state(cs)
            self.count("conf_changes_applied")

    def compact(self, n: SimNode) -> None:
        st = n.storage
        assert n.rn is not None
        idx = n.applied
        if idx <= st.snapshot().metadata.index:
            return
        st.create_snapshot(idx, n.rn.conf_state(), str(n.digest).encode())
        # Keep a random short tail so both MsgApp and MsgSnap catch-up paths are used.
        keep = self.rng.randrange(0, 4)
        if idx - keep > st.first_index() - 1:
            st.compact(idx - keep)
        self.count("compactions")

    def deliver(self, m: Message) -> None:
        to = self.nodes.get(m.to)
        frm = self.nodes.get(m.frm)
        ok = (
            to is not None
            and to.rn is not None
            and frm is not None
            and frm.group == to.group
            and self.rng.random() >= self.p.loss
        )
        if m.type == MsgType.MsgSnap and frm is not None and frm.rn is not None:
            self.count("snapshots_sent")
            try:
                frm.rn.report_snapshot(m.to, ok)
            except StepPeerNotFound:
                pass
        if not ok:
            return
        assert to is not None and to.rn is not None
        try:
            to.rn.step(m)
        except StepPeerNotFound:
            pass

    # -- random actions -----------------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        p = self.p
        r = rng.random()
        live = self.live()
        if r < 0.36:
            if self.net:
                i = rng.randrange(len(self.net))
                m = self.net[i] if rng.random() < p.dup else self.net.pop(i)
                self.deliver(m)
        elif r < 0.60:
            for n in live if rng.random() < 0.3 else live[:1] and [rng.choice(live)]:
                n.rn.tick()  # type: ignore[union-attr]
        elif r < 0.82:
            if live:
                self.process_ready(rng.choice(live))
        elif r < 0.90:
            if live:
                self.propose(rng.choice(live))
        elif r < 0.92:
            if live:
                n = rng.choice(live)
                ctx = f"r{self.steps_done}".encode()
                try:
                    n.rn.read_index(ctx)  # type: ignore[union-attr]
                    self.read_floor[ctx] = len(self.committed)
                except ProposalDropped:
                    pass
        else:
            r = rng.random()
            if r < p.partition * 8:
                self.repartition()
            elif r < p.partition * 8 + 0.15:
                for n in self.nodes.values():
                    n.group = 0
            elif r < 0.4 and live and rng.random() < p.crash * 12:
                self.crash(rng.choice(live))
            elif r < 0.6:
                for n in self.nodes.values():
                    if n.rn is None:
                        self.start(n.id)
                        self.count("restarts")
                        break
            elif r < 0.8 and rng.random() < p.transfer * 12:
                self.transfer()
            elif rng.random() < p.conf_change * 12:
                self.change_membership()
        self.steps_done += 1
        self.check_step()

    def propose(self, n: SimNode) -> None:
        self.proposed += 1
        try:
            n.rn.propose(f"{self.seed}:{self.proposed}".encode())  # type: ignore[union-attr]
        except ProposalDropped:
            self.count("dropped")

    def repartition(self) -> None:
        for n in self.nodes.values():
            n.group = self.rng.randrange(2)
        self.count("partitions")

    def crash(self, n: SimNode) -> None:
        # Unpersisted state (unstable log, in-flight Ready) is lost; storage survives.
        n.rn = None
        self.count("crashes")

    def leader(self) -> SimNode | None:
        best = None
        for n in self.live():
            if n.rn.state == StateType.StateLeader and (  # type: ignore[union-attr]
                best is None or n.rn.term > best.rn.term  # type: ignore[union-attr]
            ):
                best = n
        return best

    def transfer(self) -> None:
        ld = self.leader()
        if ld is None:
            return
        assert ld.rn is not None
        voters = [v for v in ld.rn.conf_state().voters if v != ld.id]
        if voters:
            ld.rn.transfer_leader(self.rng.choice(voters))
            self.count("transfers")

    def change_membership(self) -> None:
        ld = self.leader()
        if ld is None:
            return
        assert ld.rn is not None
        cs = ld.rn.conf_state()
        members = set(cs.voters) | set(cs.learners)
        # Ids are never reused (etcd gives a re-added member a new id): a removed node's
        # old log may still be referenced by stale leaders.
        outside = [i for i in self.nodes if i not in members and i not in self.ever_member]
        choices: list[ConfChange] = []
        for i in outside:
            choices.append(ConfChange(type=ConfChangeType.ConfChangeAddLearnerNode, node_id=i))
        for i in cs.learners:
            choices.append(ConfChange(type=ConfChangeType.ConfChangeAddNode, node_id=i))
            choices.append(ConfChange(type=ConfChangeType.ConfChangeRemoveNode, node_id=i))
        if len(cs.voters) > 3:
            for i in cs.voters:
                choices.append(ConfChange(type=ConfChangeType.ConfChangeRemoveNode, node_id=i))
        if not choices:
            return
        cc = self.rng.choice(choices)
        if cc.node_id in outside:
            self.ever_member.add(cc.node_id)
            # A joining node starts from the config it is being added to (as etcd's
            # "existing" cluster state) with an empty log.
            n = self.nodes[cc.node_id]
            n.storage = MemoryStorage(ConfState(voters=cs.voters, learners=(*cs.learners, cc.node_id)))
            n.applied = n.digest = 0
            self.start(n.id)
        try:
            ld.rn.propose_conf_change(cc)
            self.count("conf_changes_proposed")
        except ProposalDropped:
            pass

    # -- invariants ---------------------------------------------------------------------

    def check_step(self) -> None:
        for n in self.live():
            rn = n.rn
            assert rn is not None
            if rn.state != StateType.StateLeader:
                continue
            term = rn.term
            prev = self.leader_of_term.setdefault(term, n.id)
            if prev != n.id:
                raise self.fail(f"two leaders in term {term}: {prev} and {n.id}")
            log = rn.raft.log
            key = (n.id, term)
            tail = self.leader_tail.get(key)
            if tail is None:
                self.check_leader_completeness(n)
            elif log.term_or_zero(tail[0]) != tail[1]:
                raise self.fail(f"leader {n.id} term {term} overwrote its entry {tail}")
            li = log.last_index()
            self.leader_tail[key] = (li, log.term(li))
        if self.steps_done % self.p.log_matching_every == 0:
            self.check_logs()

    def check_leader_completeness(self, n: SimNode) -> None:
        log = n.rn.raft.log  # type: ignore[union-attr]
        for i in range(log.first_index(), len(self.committed) + 1):
            if log.term_or_zero(i) != self.committed[i - 1].term:
                raise self.fail(
                    f"leader {n.id} (term {n.rn.term}) lacks committed entry {i}"  # type: ignore[union-attr]
                )

    def log_of(self, n: SimNode) -> dict[int, Entry]:
        log = n.rn.raft.log  # type: ignore[union-attr]
        fi, li = log.first_index(), log.last_index()
        return {e.index: e for e in log.slice(fi, li + 1)} if li >= fi else {}

    def check_logs(self) -> None:
        """Log matching (§3.5) and committed entries never lost or changed (§3.6)."""
        logs = {n.id: self.log_of(n) for n in self.live()}
        for n in self.live():
            lg = logs[n.id]
            commit = n.rn.raft.log.committed  # type: ignore[union-attr]
            for i in range(max(1, commit - 50), min(commit, len(self.committed)) + 1):
                e = lg.get(i)
                if e is not None and e != self.committed[i - 1]:
                    raise self.fail(f"node {n.id} has {e} at committed {i}, want committed")
        ids = sorted(logs)
        for a_i, a in enumerate(ids):
            for b in ids[a_i + 1 :]:
                la, lb = logs[a], logs[b]
                common = sorted(set(la) & set(lb), reverse=True)
                matched = False
                for i in common:
                    if matched:
                        if la[i] != lb[i]:
                            raise self.fail(f"log matching broken at {i} between {a} and {b}")
                    elif la[i].term == lb[i].term:
                        matched = True
                        if la[i] != lb[i]:
                            raise self.fail(f"same index/term, different entry at {i}")

    # -- liveness -----------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(self.p.steps):
            self.step()
        self.check_logs()

    def settle_round(self) -> None:
        """One tick everywhere, then deliver and process until the network is quiet."""
        for n in self.live():
            n.rn.tick()  # type: ignore[union-attr]
        for _ in range(50):
            busy = False
            for n in self.live():
                if n.rn.has_ready():  # type: ignore[union-attr]
                    self.process_ready(n)
                    busy = True
            if self.net:
                busy = True
                msgs, self.net = self.net, []
                for m in msgs:
                    self.deliver(m)
            self.check_step()
            if not busy:
                break

    def heal_and_check_liveness(self, max_ticks: int = 300) -> int:
        """Heal everything; a leader must emerge and a new proposal must be applied by
        every live member within ``max_ticks``. Returns the ticks it took."""
        self.p.loss = 0.0
        for n in self.nodes.values():
            n.group = 0
            if n.rn is None:
                self.start(n.id)
        marker = f"final:{self.seed}".encode()
        proposed_at = None
        for tick in range(max_ticks):
            self.settle_round()
            ld = self.leader()
            if ld is None:
                continue
            members = ld.rn.conf_state()  # type: ignore[union-attr]
            if proposed_at is None or tick - proposed_at > 3 * self.p.election_tick:
                try:
                    ld.rn.propose(marker)  # type: ignore[union-attr]
                    proposed_at = tick
                except ProposalDropped:
                    continue
            ids = set(members.voters) | set(members.learners)
            at = next(
                (i for i in range(len(self.committed), 0, -1) if self.committed[i - 1].data == marker),
                None,
            )
            if at is not None and all(self.nodes[i].applied >= at for i in ids):
                self.check_logs()
                return tick
        raise self.fail(
            f"no progress within {max_ticks} ticks after healing; states="
            f"{[(n.id, n.rn.state.name, n.rn.term, n.applied) for n in self.live()]}"  # type: ignore[union-attr]
        )
