"""The raft log in memory stays within --raft-log-cache-bytes whatever --snapshot-count is;
a follower that was down catches up from entries the leader reads back from disk."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cluster_util import Cluster, wait_for
from e2e_util import target_is_etcd
from metrics_util import families, scrape

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import ServerProc, free_port

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="datastore clusters only")

BUDGET = 64 << 10
PUTS = 400
VALUE = b"v" * 4096  # ~15 entries fit the budget: the rest of the log is on disk only


def metric(url: str, name: str) -> float:
    return families(scrape(url))[name][1][0].value


def count(proc: ServerProc) -> int:
    with grpc.insecure_channel(proc.endpoint) as ch:
        return rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(
            key=b"m/", range_end=b"m0", count_only=True, serializable=True), timeout=10).count


def test_raft_log_memory_is_bounded_and_catch_up_reads_disk(tmp_path: Path) -> None:
    c = Cluster(tmp_path, extra=["--snapshot-count", "1000000",
                                 "--raft-log-cache-bytes", str(BUDGET)])
    urls = {}
    for p in c.procs:
        urls[p.name] = f"http://127.0.0.1:{free_port()}"
        p.argv += ["--listen-metrics-urls", urls[p.name]]
    c.start()
    try:
        lagging = c.followers()[0]
        leader = c.leader()
        lagging.stop()
        with grpc.insecure_channel(leader.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in range(PUTS):
                kv.Put(pb.PutRequest(key=f"m/{i:04d}".encode(), value=VALUE), timeout=10)
        for p in c.alive():
            assert 0 < metric(urls[p.name], "datastore_raft_log_cache_bytes") <= BUDGET
            assert metric(urls[p.name], "datastore_raft_log_cache_entries") < PUTS / 10
        read_before = metric(urls[leader.name], "datastore_raft_log_disk_read_entries")
        lagging.launch()
        lagging.wait_ready()
        wait_for(lambda: count(lagging) == PUTS, 60, "the restarted follower caught up")
        assert "installed a snapshot" not in lagging.log_path.read_text()  # from the log
        read = metric(urls[leader.name], "datastore_raft_log_disk_read_entries") - read_before
        assert read >= PUTS - PUTS / 10, read  # the leader read the entries back from disk
        assert metric(urls[lagging.name], "datastore_raft_log_cache_bytes") <= BUDGET
        with grpc.insecure_channel(lagging.endpoint) as ch:
            got = rpc_pb2_grpc.KVStub(ch).Range(
                pb.RangeRequest(key=b"m/0007", serializable=True), timeout=10)
        assert [kv.value for kv in got.kvs] == [VALUE]
    finally:
        c.stop()
