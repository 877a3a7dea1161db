"""Lock and Election on a 3-member datastore cluster: calls served by different members
(followers forward their writes) exclude each other, and a waiting Lock survives the
loss of the raft leader.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster_util import Cluster, wait_for

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.v3electionpb import v3election_pb2 as epb
from datastore.api.v3electionpb import v3election_pb2_grpc
from datastore.api.v3lockpb import v3lock_pb2 as lpb
from datastore.api.v3lockpb import v3lock_pb2_grpc
from datastore.testing.procs import ServerProc

WAIT = 30.0
NEGATIVE_WINDOW = 1.0  # s a queued waiter gets to (wrongly) acquire


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path).start()
    yield c
    c.stop()


class Member:
    def __init__(self, proc: ServerProc) -> None:
        self.channel = grpc.insecure_channel(proc.endpoint)
        self.lock = v3lock_pb2_grpc.LockStub(self.channel)
        self.election = v3election_pb2_grpc.ElectionStub(self.channel)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)

    def count(self, prefix: bytes) -> int:
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        return self.kv.Range(rpc.RangeRequest(key=prefix, range_end=end, count_only=True),
                             timeout=WAIT).count


def test_lock_across_members_and_a_leader_kill(cluster: Cluster) -> None:
    leader = cluster.leader()
    f1, f2 = (Member(p) for p in cluster.followers())
    lease1 = f1.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=60), timeout=WAIT).ID
    lease2 = f2.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=60), timeout=WAIT).ID
    held = f1.lock.Lock(lpb.LockRequest(name=b"cl", lease=lease1), timeout=WAIT)
    pending = f2.lock.Lock.future(lpb.LockRequest(name=b"cl", lease=lease2), timeout=WAIT * 3)
    wait_for(lambda: f1.count(b"cl/") == 2, WAIT, "the second member's waiter key")
    with pytest.raises(grpc.FutureTimeoutError):
        pending.result(timeout=NEGATIVE_WINDOW)

    old = cluster.member_id(leader)
    leader.kill()
    # the survivors first still name the dead leader: wait until they elected another
    wait_for(lambda: cluster.leader_id(cluster.alive()) not in (None, old), WAIT, "a new leader")
    f1.lock.Unlock(lpb.UnlockRequest(key=held.key), timeout=WAIT)
    got = pending.result(timeout=WAIT)
    assert got.key == f"cl/{lease2:x}".encode()

    won = f2.election.Campaign(epb.CampaignRequest(name=b"ce", lease=lease2, value=b"f2"),
                               timeout=WAIT)
    seen = f1.election.Leader(epb.LeaderRequest(name=b"ce"), timeout=WAIT)
    assert (seen.kv.key, seen.kv.value) == (won.leader.key, b"f2")
