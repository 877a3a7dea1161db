"""Fault injection on a 3-member cluster: linearizability, durability and replica
agreement under crashes, pauses and network partitions; watch and lease guarantees
across leader changes.

Peer traffic goes through per-member TCP proxies (faults_util.FaultCluster documents
what each fault does). DS_FAULT_SEED picks the seed (printed at the start of each
test); the nemesis log is printed too, so a failing run can be replayed. The watch test
under partition / pause / delay runs a fixed seed list (DS_WATCH_SEEDS, printed) plus
this run's random seed (the ``random`` case; replay it with DS_FAULT_SEED=<seed>).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cluster_util import status, wait_for
from e2e_util import target_is_etcd
from faults_util import FaultCluster, Nemesis, classify, describe, retry

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.mvccpb import kv_pb2
from datastore.testing.history import History, Status
from datastore.testing.linearizability import check
from datastore.testing.tcpproxy import TcpProxy

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="datastore clusters only")

SEED = int(os.environ.get("DS_FAULT_SEED", str(random.SystemRandom().randrange(1 << 32))))
WATCH_SEEDS = [int(x) for x in os.environ.get("DS_WATCH_SEEDS", "1,2").split(",") if x.strip()]
OP_TIMEOUT = 2.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FaultCluster]:
    c = FaultCluster(tmp_path).start()
    yield c
    c.stop()


def seeded(name: str, seed: int = SEED) -> random.Random:
    print(f"\n{name}: DS_FAULT_SEED={seed}", flush=True)
    return random.Random(f"{seed}/{name}")


# ---------------------------------------------------------------------------------------
# the proxy itself
# ---------------------------------------------------------------------------------------

def _roundtrip(port: int, payload: bytes = b"ping") -> bytes | None:
    """Send payload through 127.0.0.1:port and read the echo; None if the link is cut."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(1.0)
            s.sendall(payload)
            return s.recv(100) or None
    except OSError:
        return None


def test_tcpproxy_faults() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        stop = threading.Event()

        def echo() -> None:
            srv.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                with conn:
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        while data := conn.recv(100):
                            conn.sendall(data)
        t = threading.Thread(target=echo, daemon=True)
        t.start()
        with TcpProxy(srv.getsockname()[1], identify=lambda: {os.getpid(): "me"}) as px:
            assert _roundtrip(px.port) == b"ping"
            # an open connection is cut by a block, and new ones are refused
            held = socket.create_connection(("127.0.0.1", px.port), timeout=2)
            held.sendall(b"a")
            assert held.recv(10) == b"a"
            px.block()
            held.settimeout(2)
            with pytest.raises(OSError):
                held.sendall(b"b")
                if not held.recv(10):
                    raise ConnectionResetError("closed")
            held.close()
            assert _roundtrip(px.port) is None
            px.unblock()
            assert _roundtrip(px.port) == b"ping"
            # per-source blocks: this process is "me"
            px.block_from(["other"])
            assert _roundtrip(px.port) == b"ping"
            px.block_from(["me"])
            assert _roundtrip(px.port) is None
            px.unblock_from(["me"])
            # blackhole: accepted, but nothing comes back
            px.block("blackhole")
            assert _roundtrip(px.port) is None
            px.heal()
            assert _roundtrip(px.port) == b"ping"
            assert px.connections() in ([], [None], ["me"])
        stop.set()
        t.join(5)


# ---------------------------------------------------------------------------------------
# a. linearizability under faults
# ---------------------------------------------------------------------------------------

KEYS = [f"lin/k{i}".encode() for i in range(4)]


class Workload:
    """Client threads, each bound to one member, doing put/get/cas/delete on KEYS."""

    def __init__(self, c: FaultCluster, history: History, rng: random.Random, clients: int = 5,
                 max_ops: int | None = None) -> None:
        self.c = c
        self.h = history
        self.stop = threading.Event()
        self.max_ops = max_ops
        self.errors: dict[str, int] = {}
        self.unexpected: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True, name=f"client{k}",
                                         args=(k, rng.choice(c.voters), rng.randrange(1 << 30)))
                        for k in range(clients)]

    def start(self) -> Workload:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "client threads hung"

    def _run(self, k: int, member: int, seed: int) -> None:
        rng = random.Random(seed)
        ch = grpc.insecure_channel(self.c.procs[member].endpoint)
        stub = rpc_pb2_grpc.KVStub(ch)
        seen: dict[bytes, int] = {}  # key -> a mod_revision this client observed
        n = gen = 0
        try:
            while not self.stop.is_set() and (self.max_ops is None or n < self.max_ops):
                n += 1
                client = f"c{k}@m{member}.{gen}"
                key = rng.choice(KEYS)
                roll = rng.random()
                value = f"c{k}-{n}".encode()
                kind = "get" if roll < 0.35 else "put" if roll < 0.65 else "cas" if roll < 0.85 \
                    else "delete"
                args: tuple[object, ...] = {"get": (), "delete": (), "put": (value,),
                                            "cas": (seen.get(key, 0), value)}[kind]
                op = self.h.invoke(client, kind, key, args)  # type: ignore[arg-type]
                try:
                    result = self._do(stub, kind, key, args, seen)
                except grpc.RpcError as e:
                    definite = classify(e)
                    self.h.fail(op, definite=definite)
                    with self.lock:
                        name = f"{e.code().name}: {(e.details() or '')[:40]}"
                        self.errors[name] = self.errors.get(name, 0) + 1
                        if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                            self.unexpected.append(f"{kind} {key!r} on m{member}: {describe(e)}")
                    if not definite:
                        gen += 1  # the outcome stays open: continue as a new logical client
                    self.stop.wait(rng.uniform(0.05, 0.15))  # client retry pacing
                    if member in self.c.removed or member in self.c.removing:
                        # its member left the cluster: carry on through a current voter
                        ch.close()
                        member = rng.choice(self.c.voters)
                        ch = grpc.insecure_channel(self.c.procs[member].endpoint)
                        stub = rpc_pb2_grpc.KVStub(ch)
                        gen += 1
                    continue
                self.h.complete(op, result)
        finally:
            ch.close()

    @staticmethod
    def _do(stub: rpc_pb2_grpc.KVStub, kind: str, key: bytes, args: tuple[object, ...],
            seen: dict[bytes, int]) -> object:
        if kind == "get":
            r = stub.Range(pb.RangeRequest(key=key), timeout=OP_TIMEOUT)
            if r.kvs:
                seen[key] = r.kvs[0].mod_revision
                return (r.kvs[0].value, r.kvs[0].mod_revision)
            seen[key] = 0
            return (None, 0)
        if kind == "put":
            p = stub.Put(pb.PutRequest(key=key, value=args[0]), timeout=OP_TIMEOUT)  # type: ignore[arg-type]
            seen[key] = p.header.revision
            return p.header.revision
        if kind == "delete":
            d = stub.DeleteRange(pb.DeleteRangeRequest(key=key), timeout=OP_TIMEOUT)
            seen[key] = 0
            return d.deleted
        expected, value = args
        t = stub.Txn(pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                mod_revision=expected)],  # type: ignore[arg-type]
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))]),  # type: ignore[arg-type]
            timeout=OP_TIMEOUT)
        if t.succeeded:
            seen[key] = t.header.revision
        else:
            seen.pop(key, None)  # stale: the next cas on this key guesses "absent" (0)
        return (t.succeeded, t.header.revision)


def final_reads(c: FaultCluster, h: History) -> dict[bytes, tuple[bytes | None, int]]:
    """Linearizable read of every key (recorded in the history), then every member's
    serializable view must be the same value and mod_revision."""
    out: dict[bytes, tuple[bytes | None, int]] = {}
    with grpc.insecure_channel(c.procs[c.voters[0]].endpoint) as ch:
        stub = rpc_pb2_grpc.KVStub(ch)
        for key in KEYS:
            def read(key: bytes = key) -> pb.RangeResponse:
                return stub.Range(pb.RangeRequest(key=key), timeout=5)
            r = retry(read, 30, f"final read of {key!r}")
            with h.record("final", "get", key) as rec:
                rec.ok((r.kvs[0].value, r.kvs[0].mod_revision) if r.kvs else (None, 0))
            out[key] = (r.kvs[0].value, r.kvs[0].mod_revision) if r.kvs else (None, 0)
    for p in (c.procs[i] for i in c.members):
        with grpc.insecure_channel(p.endpoint) as ch:
            stub = rpc_pb2_grpc.KVStub(ch)
            for key in KEYS:
                r = stub.Range(pb.RangeRequest(key=key, serializable=True), timeout=5)
                got = (r.kvs[0].value, r.kvs[0].mod_revision) if r.kvs else (None, 0)
                assert got == out[key], f"{p.name} has {key!r} = {got}, linearizable read {out[key]}"
    return out


def check_acked_writes_durable(c: FaultCluster, h: History) -> int:
    """Every acknowledged put / successful cas is in every member's MVCC history: a
    serializable Range at the write's revision returns that value with that mod_revision."""
    acked = [(o.key, o.args[-1], o.result if o.kind == "put" else o.result[1])
             for o in h.operations()
             if o.status is Status.OK and (o.kind == "put" or (o.kind == "cas" and o.result[0]))]
    revs = [r for _, _, r in acked]
    assert len(revs) == len(set(revs)), "two acknowledged writes share a revision"
    for p in (c.procs[i] for i in c.members):
        with grpc.insecure_channel(p.endpoint) as ch:
            stub = rpc_pb2_grpc.KVStub(ch)
            for key, value, rev in acked:
                r = stub.Range(pb.RangeRequest(key=key, revision=rev, serializable=True), timeout=5)
                got = [(kv.value, kv.mod_revision) for kv in r.kvs]
                assert got == [(value, rev)], (
                    f"{p.name}: acknowledged write {key!r}={value!r}@{rev} reads back as {got}")
    return len(acked)


def check_hashkv(c: FaultCluster, rev: int) -> None:
    hashes = []
    for p in (c.procs[i] for i in c.members):
        with grpc.insecure_channel(p.endpoint) as ch:
            r = rpc_pb2_grpc.MaintenanceStub(ch).HashKV(pb.HashKVRequest(revision=rev), timeout=10)
            hashes.append((p.name, r.hash, r.compact_revision, r.hash_revision))
    assert len({(h, cr) for _, h, cr, _ in hashes}) == 1, f"HashKV at {rev} differs: {hashes}"


def run_linearizability(c: FaultCluster, tmp_path: Path, name: str, rounds: int, clients: int,
                        min_ok: int, membership: bool = False) -> None:
    rng = seeded(name)
    h = History()
    w = Workload(c, h, rng, clients=clients).start()
    nem = Nemesis(c, rng, rounds=rounds, membership=membership).start()
    t0 = time.monotonic()
    try:
        nem.join(timeout=60 + rounds * 40)
    finally:
        w.join()
    print(f"{len(h)} ops in {time.monotonic() - t0:.1f}s, {nem.done_rounds} nemesis rounds; "
          f"errors {w.errors}", flush=True)
    if membership:
        print(f"membership changes: {nem.member_changes}; members now "
              f"{[c.names[i] for i in c.members]}", flush=True)
        adds = sum(x.startswith("promote") for x in nem.member_changes)
        removes = sum(x.startswith("remove") for x in nem.member_changes)
        assert adds >= rounds // 2 and removes >= rounds // 2 - 1, nem.member_changes
    applied, rev = c.wait_converged()
    final = final_reads(c, h)
    print(f"converged at applied index {applied}, revision {rev}; final {final}", flush=True)
    dump = tmp_path / "history.json"
    res = check(h, timeout_s=60)
    if not res.ok:
        h.dump(dump)
        print("nemesis log:\n" + "\n".join(c.log))
        pytest.fail(f"history not linearizable (seed {SEED}, history dumped to {dump}):\n{res}")
    ops = h.operations()
    ok = [o for o in ops if o.status is Status.OK]
    ok_writes = [o for o in ok if o.kind != "get"]
    indet = [o for o in ops if o.is_indeterminate]
    print(f"linearizable: {len(ok)} ok ({len(ok_writes)} writes), {len(indet)} indeterminate; "
          f"checker {res.stats}", flush=True)
    assert len(ok) >= min_ok and ok_writes, "too few operations completed to mean anything"
    assert_checker_rejects_stale_read(h)
    assert not w.unexpected, f"unexpected errors: {w.unexpected[:10]}"
    n = check_acked_writes_durable(c, h)
    print(f"{n} acknowledged writes present on every member", flush=True)
    check_hashkv(c, rev)


def assert_checker_rejects_stale_read(h: History) -> None:
    """The check has teeth on this very history: rewrite one acknowledged read to return
    a value that an already-completed later write had overwritten; it must be rejected."""
    ops = h.operations()
    writes = sorted((o for o in ops if o.status is Status.OK
                     and (o.kind == "put" or (o.kind == "cas" and o.result[0]))),
                    key=lambda o: o.complete_ns or 0)
    for g in reversed(ops):
        if g.kind != "get" or g.status is not Status.OK or g.client_id == "final":
            continue
        before = [w for w in writes if w.key == g.key and (w.complete_ns or 0) < g.invoke_ns]
        if len(before) < 2:
            continue
        rev = lambda w: w.result if w.kind == "put" else w.result[1]  # noqa: E731
        old = min(before[-2:], key=rev)
        g.result = (old.args[-1], rev(old))
        res = check(History.from_operations(ops), timeout_s=30)
        assert not res.ok, f"checker accepted a stale read {g} (seed {SEED})"
        return
    pytest.fail("no read to mutate in the history")


def test_linearizable_under_faults(cluster: FaultCluster, tmp_path: Path) -> None:
    # one round each of: kill leader, pause follower, isolate, isolate leader,
    # block inbound of leader, cut a leader link, delay
    run_linearizability(cluster, tmp_path, "linearizable", rounds=len(Nemesis.FAULTS), clients=5,
                        min_ok=200)


def test_linearizable_under_faults_with_membership_changes(cluster: FaultCluster,
                                                          tmp_path: Path) -> None:
    # kill leader / pause follower / isolate / isolate leader, while a learner is added
    # (then promoted after the heal) or a healthy voter, maybe the leader, is removed
    run_linearizability(cluster, tmp_path, "membership", rounds=4, clients=5, min_ok=150,
                        membership=True)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_linearizable_under_faults_with_membership_changes_soak(cluster: FaultCluster,
                                                               tmp_path: Path) -> None:
    """``make soak``: 100 nemesis rounds, every one with a membership change."""
    run_linearizability(cluster, tmp_path, "membership-soak",
                        rounds=int(os.environ.get("DS_SOAK_ROUNDS", "100")), clients=6,
                        min_ok=2000, membership=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~40k acknowledged writes are each read back from every member
def test_linearizable_under_faults_soak(cluster: FaultCluster, tmp_path: Path) -> None:
    run_linearizability(cluster, tmp_path, "linearizable-soak", rounds=40, clients=8, min_ok=2000)


# ---------------------------------------------------------------------------------------
# b. watch guarantees across leader changes
# ---------------------------------------------------------------------------------------

PREFIX = b"w/"
PREFIX_END = b"w0"
SENTINEL = b"w/~end"


@dataclass
class Seen:
    """One event as compared between watches and the MVCC history."""

    rev: int
    type: int
    key: bytes
    value: bytes


@dataclass
class WatchRun:
    name: str
    start_member: int
    events: list[Seen] = field(default_factory=list)
    resumes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


def watch_until_sentinel(c: FaultCluster, run: WatchRun, start_rev: int, stop: threading.Event,
                         rng: random.Random) -> None:
    """Watch PREFIX from start_rev; when the stream breaks, resume on another (running)
    member from last seen revision + 1. Returns after SENTINEL is delivered."""
    next_rev = start_rev
    member = run.start_member
    try:
        while not stop.is_set():
            if not c.is_running(member):
                member = rng.choice([i for i in range(len(c.procs)) if c.is_running(i)] or [member])
            ch = grpc.insecure_channel(c.procs[member].endpoint)
            reqs_done = threading.Event()

            def reqs(rev: int = next_rev, done: threading.Event = reqs_done) -> Iterator[pb.WatchRequest]:
                yield pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=PREFIX, range_end=PREFIX_END, start_revision=rev))
                done.wait()  # keep the request side open until we are finished

            try:
                stream = rpc_pb2_grpc.WatchStub(ch).Watch(reqs())
                for resp in stream:
                    if resp.canceled or resp.compact_revision:
                        run.problems.append(f"m{member}: watch canceled ({resp.cancel_reason!r}, "
                                            f"compact {resp.compact_revision})")
                        return
                    for ev in resp.events:
                        run.events.append(Seen(ev.kv.mod_revision, ev.type, ev.kv.key, ev.kv.value))
                        next_rev = ev.kv.mod_revision + 1
                        if ev.kv.key == SENTINEL:
                            return
                    if stop.is_set():
                        return
            except grpc.RpcError as e:
                run.resumes.append(f"m{member} broke ({describe(e)}); resume from {next_rev}")
            finally:
                reqs_done.set()
                ch.close()
            # pick another member to resume on (the one that failed may be down)
            candidates = [i for i in range(len(c.procs)) if i != member and c.is_running(i)]
            member = rng.choice(candidates) if candidates else member
            stop.wait(0.05)  # reconnect pacing, not synchronisation
    finally:
        run.done.set()


def mvcc_events(c: FaultCluster, start: int, end: int) -> list[Seen]:
    """The prefix's events in [start, end], reconstructed from serializable Ranges at
    every revision (no watch involved): puts are keys whose mod_revision is the revision,
    deletes are keys present at rev-1 and absent at rev."""
    out: list[Seen] = []
    with grpc.insecure_channel(c.procs[0].endpoint) as ch:
        stub = rpc_pb2_grpc.KVStub(ch)

        def snap(rev: int) -> dict[bytes, kv_pb2.KeyValue]:
            r = stub.Range(pb.RangeRequest(key=PREFIX, range_end=PREFIX_END, revision=rev,
                                           serializable=True), timeout=10)
            return {kv.key: kv for kv in r.kvs}
        prev = snap(start - 1)
        for rev in range(start, end + 1):
            cur = snap(rev)
            for k, kv in cur.items():
                if kv.mod_revision == rev:
                    out.append(Seen(rev, kv_pb2.Event.PUT, k, kv.value))
            for k in prev.keys() - cur.keys():
                out.append(Seen(rev, kv_pb2.Event.DELETE, k, b""))
            prev = cur
    return out


def test_watch_across_leader_changes(cluster: FaultCluster) -> None:
    run_watch(cluster, "watch", rounds=3, faults=("kill_leader",))


PARTITIONS = ("isolate", "isolate_leader", "block_inbound_leader", "cut_leader_link")


@pytest.mark.parametrize("seed", [*WATCH_SEEDS, None],
                         ids=[*(f"seed{s}" for s in WATCH_SEEDS), "random"])
def test_watch_under_partition_pause_delay(cluster: FaultCluster, seed: int | None) -> None:
    """One partition (kind chosen by the seed), one paused follower and one delayed
    member, in a seeded order, while watchers on every member must see exactly the MVCC
    history. Replay: DS_WATCH_SEEDS=<n> (fixed) or DS_FAULT_SEED=<n> -k random."""
    print(f"\nwatch seeds: fixed {WATCH_SEEDS} + random {SEED}", flush=True)
    s = SEED if seed is None else seed
    order = random.Random(f"{s}/watch-faults")
    faults = [order.choice(PARTITIONS), "pause_follower", "delay"]
    order.shuffle(faults)
    run_watch(cluster, "watch-faults", rounds=3, faults=tuple(faults), seed=s)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_watch_under_faults_soak(cluster: FaultCluster) -> None:
    run_watch(cluster, "watch-soak", rounds=20, faults=Nemesis.FAULTS)


def run_watch(c: FaultCluster, name: str, rounds: int, faults: tuple[str, ...],
              seed: int = SEED) -> None:
    rng = seeded(name, seed)
    print(f"{name}: faults {faults}", flush=True)
    with grpc.insecure_channel(c.procs[0].endpoint) as ch:
        stub = rpc_pb2_grpc.KVStub(ch)
        for i in range(5):
            stub.Put(pb.PutRequest(key=PREFIX + b"k%d" % i, value=b"before"), timeout=10)
        start_rev = stub.Put(pb.PutRequest(key=b"x/marker", value=b"m"), timeout=10).header.revision + 1
    stop = threading.Event()
    runs = [WatchRun(f"watch{i}", i) for i in range(3)]
    threads = [threading.Thread(target=watch_until_sentinel, daemon=True,
                                args=(c, r, start_rev, stop, random.Random(rng.random())))
               for r in runs]
    for t in threads:
        t.start()

    acked: list[tuple[int, int, bytes, bytes]] = []  # (rev, type, key, value)
    wstop = threading.Event()
    lock = threading.Lock()

    def writer(k: int, seed: int) -> None:
        r = random.Random(seed)
        chans = [grpc.insecure_channel(p.endpoint) for p in c.procs]
        n = 0
        while not wstop.is_set():
            n += 1
            stub = rpc_pb2_grpc.KVStub(r.choice(chans))
            key = PREFIX + b"k%d" % r.randrange(12) if r.random() < 0.8 else b"x/k%d" % r.randrange(3)
            try:
                if r.random() < 0.8:
                    value = b"w%d-%d" % (k, n)
                    rev = stub.Put(pb.PutRequest(key=key, value=value), timeout=OP_TIMEOUT).header.revision
                    if key.startswith(PREFIX):
                        with lock:
                            acked.append((rev, kv_pb2.Event.PUT, key, value))
                else:
                    d = stub.DeleteRange(pb.DeleteRangeRequest(key=key), timeout=OP_TIMEOUT)
                    if d.deleted and key.startswith(PREFIX):
                        with lock:
                            acked.append((d.header.revision, kv_pb2.Event.DELETE, key, b""))
            except grpc.RpcError:
                pass  # indeterminate: the MVCC history decides
        for ch in chans:
            ch.close()

    writers = [threading.Thread(target=writer, args=(k, rng.randrange(1 << 30)), daemon=True)
               for k in range(3)]
    for t in writers:
        t.start()
    try:
        nem = Nemesis(c, rng, rounds=rounds, faults=faults, calm=(0.8, 1.5)).start()
        nem.join(timeout=60 + 40 * rounds)
    finally:
        wstop.set()
        for t in writers:
            t.join(30)
    c.wait_converged()
    with grpc.insecure_channel(c.procs[0].endpoint) as ch:
        end_rev = retry(lambda: rpc_pb2_grpc.KVStub(ch).Put(
            pb.PutRequest(key=SENTINEL, value=b"end"), timeout=5), 30, "sentinel put").header.revision
    for r in runs:
        if not r.done.wait(60):
            stop.set()
    stop.set()
    for t in threads:
        t.join(10)
    print("\n".join(c.log))
    expected = mvcc_events(c, start_rev, end_rev)
    print(f"{len(expected)} prefix events in revisions [{start_rev}, {end_rev}], "
          f"{len(acked)} acknowledged", flush=True)
    assert len(expected) > 50, "too few writes to mean anything"
    exp_keyed = {(e.rev, e.type, e.key, e.value) for e in expected}
    missing_acks = [a for a in acked if a not in exp_keyed]
    assert not missing_acks, f"acknowledged writes missing from the MVCC history: {missing_acks[:5]}"
    total_resumes = 0
    for r in runs:
        print(f"{r.name}: {len(r.events)} events, resumes: {r.resumes}", flush=True)
        total_resumes += len(r.resumes)
        assert not r.problems, f"{r.name}: {r.problems}"
        revs = [e.rev for e in r.events]
        dups = sorted({x for x in revs if revs.count(x) > 1})
        assert not dups, f"{r.name}: duplicate revisions {dups[:10]} (resumes {r.resumes})"
        assert revs == sorted(revs), f"{r.name}: revisions out of order"
        got = [(e.rev, e.type, e.key, e.value) for e in r.events]
        want = [(e.rev, e.type, e.key, e.value) for e in expected]
        if got != want:
            gs, ws = set(got), set(want)
            pytest.fail(f"{r.name} (resumes {r.resumes}): missing {sorted(ws - gs)[:5]}, "
                        f"unexpected {sorted(gs - ws)[:5]} (seed {seed})")
    if "kill_leader" in faults:
        assert total_resumes >= 1, "no watch stream was broken: the test did not exercise resumption"


# ---------------------------------------------------------------------------------------
# c. lease keep-alive through a follower across a leader change
# ---------------------------------------------------------------------------------------

def test_lease_kept_alive_across_leader_change(cluster: FaultCluster) -> None:
    c = cluster
    seeded("lease")
    leader = c.wait_leader()
    fol = next(i for i in range(3) if i != leader)
    ttl = 3
    ch = grpc.insecure_channel(c.procs[fol].endpoint)
    lease = rpc_pb2_grpc.LeaseStub(ch)
    kv = rpc_pb2_grpc.KVStub(ch)
    lid = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl), timeout=10).ID
    kv.Put(pb.PutRequest(key=b"leased", value=b"v", lease=lid), timeout=10)
    stop = threading.Event()
    renewals: list[tuple[float, int]] = []
    failures: list[str] = []

    def keepalive() -> None:
        # one keep-alive every ttl/3 seconds (the client's schedule, as etcd's client does)
        while not stop.is_set():
            try:
                r = next(lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lid)]), timeout=2))
                renewals.append((time.monotonic(), r.TTL))
            except (grpc.RpcError, StopIteration) as e:
                failures.append(describe(e))
            stop.wait(ttl / 3)

    t = threading.Thread(target=keepalive, daemon=True)
    t.start()
    try:
        c.kill(leader)
        others = [i for i in range(3) if i != leader]
        c.wait_leader(others, timeout=30)
        # Keep polling the key through a full TTL and more after the new leader took over.
        deadline = time.monotonic() + 2.5 * ttl
        while time.monotonic() < deadline:
            # serializable: the follower's applied state, where a lease revoke would show
            r = kv.Range(pb.RangeRequest(key=b"leased", serializable=True), timeout=5)
            assert r.count == 1, f"kept-alive lease expired across the leader change ({failures})"
            time.sleep(0.2)  # poll interval of the check above
        c.restart(leader)
        assert renewals and renewals[-1][1] > 0, f"no successful keep-alive: {failures}"
        assert any(ts > deadline - 2.5 * ttl for ts, _ in renewals), "no renewal after the leader change"
    finally:
        stop.set()
        t.join(10)
    # without keep-alives it does expire (so the check above could fail)
    wait_for(lambda: kv.Range(pb.RangeRequest(key=b"leased"), timeout=5).count == 0, ttl * 4 + 10,
             "lease expiry after keep-alives stop")
    ch.close()
    assert status(c.procs[leader]).header.member_id
