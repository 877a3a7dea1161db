"""Multi-member clusters of real datastore processes: replication, failover, membership
changes with the real etcdctl, snapshot catch-up. Every wait polls a condition."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster_util import Cluster, status, wait_for
from e2e_util import target_is_etcd

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import ServerProc, etcdctl

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="datastore clusters only")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path).start()
    yield c
    c.stop()


def kv(proc: ServerProc) -> tuple[grpc.Channel, rpc_pb2_grpc.KVStub]:
    ch = grpc.insecure_channel(proc.endpoint)
    return ch, rpc_pb2_grpc.KVStub(ch)


def get(proc: ServerProc, key: bytes, serializable: bool = False, **kw: object) -> pb.RangeResponse:
    with grpc.insecure_channel(proc.endpoint) as ch:
        return rpc_pb2_grpc.KVStub(ch).Range(
            pb.RangeRequest(key=key, serializable=serializable, **kw), timeout=10)


def put(proc: ServerProc, key: bytes, value: bytes, lease: int = 0) -> pb.PutResponse:
    with grpc.insecure_channel(proc.endpoint) as ch:
        return rpc_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=key, value=value, lease=lease),
                                           timeout=10)


def count_prefix(proc: ServerProc, prefix: bytes, serializable: bool = True) -> int:
    return get(proc, prefix, serializable=serializable, range_end=prefix[:-1] + bytes([prefix[-1] + 1]),
               count_only=True).count


def members(proc: ServerProc) -> list[pb.Member]:
    with grpc.insecure_channel(proc.endpoint) as ch:
        return list(rpc_pb2_grpc.ClusterStub(ch).MemberList(
            pb.MemberListRequest(linearizable=True), timeout=10).members)


def test_cluster_forms_and_replicates(cluster: Cluster) -> None:
    lid = cluster.wait_leader()
    ids = {cluster.member_id(p) for p in cluster.procs}
    assert lid in ids and len(ids) == 3
    f1, f2 = cluster.followers()
    assert put(f1, b"k", b"from-follower").header.revision >= 2
    r = get(f2, b"k")  # linearizable, on another follower
    assert [x.value for x in r.kvs] == [b"from-follower"]
    # every member publishes its name and client URL through the log
    def published() -> bool:
        ms = members(f2)
        return len(ms) == 3 and all(m.name and m.clientURLs for m in ms)
    wait_for(published, 20, "all members published")
    out = etcdctl(f1.endpoint, "member", "list").stdout.decode()
    assert out.count("started") == 3, out
    # Status everywhere reports the same leader and term; indexes converge
    def converged() -> bool:
        sts = [status(p) for p in cluster.procs]
        return (len({s.leader for s in sts}) == 1 and len({s.raftTerm for s in sts}) == 1
                and len({s.raftAppliedIndex for s in sts}) == 1)
    wait_for(converged, 20, "statuses converge")
    # a lease kept alive through a follower is renewed on the leader
    with grpc.insecure_channel(f1.endpoint) as ch:
        lease = rpc_pb2_grpc.LeaseStub(ch)
        lid_ = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=10).ID
        resp = next(lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lid_)]), timeout=10))
        assert lid_ == resp.ID and resp.TTL == 30


class Writers:
    """Threads putting unique keys round-robin over members; records acknowledged keys."""

    def __init__(self, procs: list[ServerProc], n: int = 3) -> None:
        self.acked: list[bytes] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(procs, i), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, procs: list[ServerProc], i: int) -> None:
        chans = [grpc.insecure_channel(p.endpoint) for p in procs]
        stubs = [rpc_pb2_grpc.KVStub(c) for c in chans]
        j = 0
        while not self.stop.is_set():
            key = f"load/w{i}/{j:06d}".encode()
            stub = stubs[(i + j) % len(stubs)]
            try:
                stub.Put(pb.PutRequest(key=key, value=b"v"), timeout=3)
                with self.lock:
                    self.acked.append(key)
            except grpc.RpcError:
                pass  # unacknowledged: may or may not be there
            j += 1
        for c in chans:
            c.close()

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def join(self) -> list[bytes]:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        return list(self.acked)


def test_leader_killed_under_load(cluster: Cluster) -> None:
    leader = cluster.leader()
    old_lid = cluster.member_id(leader)
    followers = cluster.followers()
    follower_ids = {cluster.member_id(p) for p in followers}
    w = Writers(cluster.procs)
    try:
        wait_for(lambda: w.count() >= 50, 30, "writes before the kill")
        leader.kill()
        # the followers may still name the dead leader until they notice: wait for a live one
        new_lid = wait_for(lambda: (lid := cluster.leader_id(followers)) in follower_ids and lid,
                           30, "a live follower elected")
        assert new_lid != old_lid
        before = w.count()
        wait_for(lambda: w.count() >= before + 50, 30, "writes after the failover")
    finally:
        acked = w.join()
    survivor = followers[0]
    for key in acked:
        assert get(survivor, key).count == 1, f"acknowledged {key!r} lost"
    # the old leader restarts on its data dir and catches up
    leader.launch()
    leader.wait_ready()
    total = count_prefix(survivor, b"load/", serializable=False)
    wait_for(lambda: count_prefix(leader, b"load/") == total, 30, "restarted member caught up")
    cluster.wait_leader()


def test_paused_follower_catches_up(cluster: Cluster) -> None:
    f = cluster.followers()[0]
    other = next(p for p in cluster.procs if p is not f)
    f.pause()
    try:
        for i in range(100):
            put(other, f"p/{i:03d}".encode(), b"x")
    finally:
        f.resume()
    wait_for(lambda: count_prefix(f, b"p/") == 100, 30, "resumed follower caught up")
    assert [x.value for x in get(f, b"p/050").kvs] == [b"x"]


def test_restart_member_with_data_dir(cluster: Cluster) -> None:
    p = cluster.followers()[0]
    put(p, b"before", b"1")
    p.stop()
    put(cluster.alive()[0], b"during", b"2")
    p.launch()
    p.wait_ready()
    wait_for(lambda: get(p, b"during", serializable=True).count == 1, 30, "restarted caught up")
    assert get(p, b"before").kvs[0].value == b"1"
    cluster.wait_leader()


def test_membership_changes_with_etcdctl(cluster: Cluster) -> None:
    leader = cluster.leader()
    ep = cluster.followers()[0].endpoint
    put(leader, b"a", b"1")
    new = cluster.new_member("m3")
    out = etcdctl(ep, "member", "add", "m3", f"--peer-urls={new.peer_url}", "--learner")
    text = out.stdout.decode()
    assert "ETCD_INITIAL_CLUSTER_STATE=\"existing\"" in text, text
    new_id = next(m.ID for m in members(leader) if m.peerURLs == [new.peer_url])
    assert next(m for m in members(leader) if new_id == m.ID).isLearner
    # a second learner is refused (etcd's default max learners is 1)
    r = etcdctl(ep, "member", "add", "x", "--peer-urls=http://127.0.0.1:1", "--learner",
                check=False)
    assert r.returncode != 0 and b"too many learner members" in r.stderr, r.stderr
    new.launch()
    new.wait_ready()
    wait_for(lambda: get(new, b"a", serializable=True).count == 1, 30, "learner caught up")
    assert status(new).isLearner

    def promoted() -> bool:
        r = etcdctl(ep, "member", "promote", f"{new_id:x}", check=False)
        assert r.returncode == 0 or b"in sync with leader" in r.stderr, r.stderr
        return r.returncode == 0
    wait_for(promoted, 30, "promote")
    assert not next(m for m in members(leader) if new_id == m.ID).isLearner
    cluster.procs.append(new)
    wait_for(lambda: not status(new).isLearner, 10, "new member is a voter")
    wait_for(lambda: all(m.name for m in members(leader)), 20, "new member published")

    # remove a follower
    victim = next(p for p in cluster.followers() if p is not new)
    vid = cluster.member_id(victim)
    r = etcdctl(leader.endpoint, "member", "remove", f"{vid:x}", check=False)
    assert r.returncode == 0, r.stderr
    cluster.procs.remove(victim)
    wait_for(lambda: victim.popen is not None and victim.popen.poll() is not None, 20,
             "removed member exits")
    assert len(members(leader)) == 3
    put(new, b"b", b"2")
    # remove the leader itself
    lid = cluster.member_id(leader)
    survivor = next(p for p in cluster.procs if p is not leader)
    r = etcdctl(survivor.endpoint, "member", "remove", f"{lid:x}", check=False)
    assert r.returncode == 0, r.stderr
    cluster.procs.remove(leader)
    wait_for(lambda: leader.popen is not None and leader.popen.poll() is not None, 20,
             "removed leader exits")
    new_lid = cluster.wait_leader()
    assert new_lid != lid
    put(survivor, b"c", b"3")
    for p in cluster.procs:
        wait_for(lambda p=p: get(p, b"c", serializable=True).count == 1, 20, "replicated")
        assert {m.ID for m in members(p)} == {cluster.member_id(q) for q in cluster.procs}
    # errors as etcd
    r = etcdctl(survivor.endpoint, "member", "remove", f"{lid:x}", check=False)
    assert r.returncode != 0 and b"member not found" in r.stderr, r.stderr
    r = etcdctl(survivor.endpoint, "member", "promote", f"{new_id:x}", check=False)
    assert r.returncode != 0 and b"can only promote a learner member" in r.stderr, r.stderr


def test_move_leader(cluster: Cluster) -> None:
    leader = cluster.leader()
    target = cluster.followers()[0]
    tid = cluster.member_id(target)
    r = etcdctl(target.endpoint, "move-leader", f"{tid:x}", check=False)
    assert r.returncode != 0  # only the leader can move leadership (etcdctl asks the endpoint)
    etcdctl(leader.endpoint, "move-leader", f"{tid:x}")
    assert cluster.wait_leader() == tid


def test_follower_behind_compacted_log_gets_snapshot(tmp_path: Path) -> None:
    c = Cluster(tmp_path, extra=["--snapshot-count", "50",
                                 "--experimental-snapshot-catchup-entries", "10"]).start()
    try:
        lagging = c.followers()[0]
        other = next(p for p in c.procs if p is not lagging)
        put(other, b"early", b"0")
        lagging.stop()
        with grpc.insecure_channel(other.endpoint) as ch:
            lease_id = rpc_pb2_grpc.LeaseStub(ch).LeaseGrant(
                pb.LeaseGrantRequest(TTL=300), timeout=10).ID
        put(other, b"leased", b"l", lease=lease_id)
        for i in range(200):
            put(other, f"s/{i:03d}".encode(), str(i).encode())
        lagging.launch()
        lagging.wait_ready()
        wait_for(lambda: count_prefix(lagging, b"s/") == 200, 60, "snapshot catch-up")
        assert "installed a snapshot" in lagging.log_path.read_text()
        assert get(lagging, b"leased", serializable=True).kvs[0].lease == lease_id
        assert get(lagging, b"early", serializable=True).count == 1
        # it keeps replicating after the snapshot
        put(other, b"after", b"1")
        wait_for(lambda: get(lagging, b"after", serializable=True).count == 1, 20, "after")
        wait_for(lambda: len({status(p).raftAppliedIndex for p in c.procs}) == 1, 20,
                 "applied indexes converge")
        st = [status(p) for p in c.procs]
        assert len({s.header.revision for s in st}) == 1, [s.header.revision for s in st]
    finally:
        c.stop()
