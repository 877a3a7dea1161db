"""Metrics that need a cluster: etcd's peer snapshot transfer families after forced
transfers (one cut at the receiver, one cut at the sender, one complete), and the read
index counters around a leader change and a lost quorum.

Names, types, label names and buckets are etcd 3.6's (server/etcdserver/api/rafthttp/
metrics.go, server/etcdserver/metrics.go). Every wait polls a condition.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster_util import SLOW_STREAM, SMALL_LOG, Cluster, lag_behind, log_lines, status, wait_for
from e2e_util import target_is_etcd

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import ServerProc, free_port
from e2e.metrics_util import families, samples, scrape

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="datastore clusters only")

# prometheus.ExponentialBuckets(0.1, 2, 10), as client_golang writes the bounds
SNAPSHOT_BUCKETS = {"0.1", "0.2", "0.4", "0.8", "1.6", "3.2", "6.4", "12.8", "25.6", "51.2", "+Inf"}


def with_metrics(c: Cluster) -> dict[str, str]:
    """Give each member a metrics URL (before it starts); member name -> base URL."""
    bases = {}
    for p in c.procs:
        port = free_port()
        p.argv += [f"--listen-metrics-urls=http://127.0.0.1:{port}"]
        bases[p.name] = f"http://127.0.0.1:{port}"
    return bases


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Cluster, dict[str, str]]]:
    c = Cluster(tmp_path, extra=SMALL_LOG)
    for p in c.procs:
        p.env.update(SLOW_STREAM)
    bases = with_metrics(c)
    c.start()
    try:
        yield c, bases
    finally:
        c.stop()


def count(text: str, name: str, **labels: str) -> float:
    """The sample's value, 0 when the series does not exist (yet). etcd's counters named
    without ``_total`` are read from the page as it is (Prometheus' Python parser would
    add the suffix): ``name{To="..."} value``."""
    if name.startswith("etcd_network_snapshot_") and name.endswith(("_success", "_failures")):
        (label, want), = labels.items()
        got = [float(m.group(1)) for m in re.finditer(
            rf'^{name}{{{label}="{want}"}} (\S+)$', text, re.MULTILINE)]
    else:
        got = [s.value for s in samples(text) if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) <= 1, (name, labels, got)
    return got[0] if got else 0.0


def receiving(lagging: ServerProc, before: int) -> str:
    """Wait for a transfer's first chunk on ``lagging`` (after ``before`` earlier ones);
    the sender's member id, hex."""
    wait_for(lambda: len(log_lines(lagging, "snapshot transfer progress", direction="receive"))
             > before, 60, "the first chunk of a snapshot on the lagging member")
    return str(log_lines(lagging, "receiving a snapshot")[-1]["frm"])


def transfers_seen(lagging: ServerProc) -> int:
    return len(log_lines(lagging, "snapshot transfer progress", direction="receive"))


def test_snapshot_transfer_families(cluster: tuple[Cluster, dict[str, str]]) -> None:
    c, bases = cluster
    hexid = {p.name: f"{c.member_id(p):x}" for p in c.procs}
    by_hex = {h: p for p in c.procs for h in [hexid[p.name]]}
    lagging, _ = lag_behind(c, {})
    lag = hexid[lagging.name]

    # 1. the receiver dies mid-transfer: a send failure at the sender, To the receiver
    before = transfers_seen(lagging)
    lagging.launch()
    first = by_hex[receiving(lagging, before)]
    # in flight at both ends while it streams (the slow stream lasts seconds)
    assert count(scrape(bases[first.name]), "etcd_network_snapshot_send_inflights_total",
                 To=lag) == 1
    assert count(scrape(bases[lagging.name]), "etcd_network_snapshot_receive_inflights_total",
                 From=hexid[first.name]) == 1
    lagging.kill()
    # (raft tries again while the receiver is down: one failure or more)
    wait_for(lambda: count(scrape(bases[first.name]), "etcd_network_snapshot_send_failures",
                           To=lag) >= 1, 30, "the send failure counted at the sender")
    assert count(scrape(bases[first.name]), "etcd_network_snapshot_send_success", To=lag) == 0

    # 2. the sender dies mid-transfer: a receive failure at the receiver, From the sender
    before = transfers_seen(lagging)
    lagging.launch()
    second = by_hex[receiving(lagging, before)]
    second.kill()
    wait_for(lambda: count(scrape(bases[lagging.name]), "etcd_network_snapshot_receive_failures",
                           From=hexid[second.name]) >= 1, 30, "the receive failure counted")

    # 3. the member left sends a whole snapshot: success and its duration at both ends
    third = next(p for p in c.procs if p not in (lagging, second))
    wait_for(lambda: log_lines(lagging, "installed a snapshot from the leader"), 60,
             "a snapshot installed")
    got = scrape(bases[lagging.name])
    frm = hexid[third.name]
    assert count(got, "etcd_network_snapshot_receive_success", From=frm) == 1
    assert count(got, "etcd_network_snapshot_receive_total_duration_seconds_count", From=frm) == 1
    sent = scrape(bases[third.name])
    assert count(sent, "etcd_network_snapshot_send_success", To=lag) == 1
    assert count(sent, "etcd_network_snapshot_send_total_duration_seconds_count", To=lag) == 1
    assert count(sent, "etcd_network_snapshot_send_failures", To=lag) == 0
    assert count(sent, "etcd_network_snapshot_send_inflights_total", To=lag) == 0
    assert count(got, "etcd_network_snapshot_receive_inflights_total", From=frm) == 0

    # etcd's names (the counters without _total), types, label names and buckets
    for text, label in ((sent, "To"), (got, "From")):
        fams = families(text)
        way = "send" if label == "To" else "receive"
        for suffix in ("success", "failures"):
            name = f"etcd_network_snapshot_{way}_{suffix}"
            assert f"# TYPE {name} counter\n" in text, name
            assert f"{name}_total" not in text, name
            assert {frozenset(s.labels) for s in fams[name][1]} <= {frozenset({label})}, name
        hist = f"etcd_network_snapshot_{way}_total_duration_seconds"
        assert fams[hist][0] == "histogram"
        assert {s.labels["le"] for s in fams[hist][1] if s.name.endswith("_bucket")} \
            == SNAPSHOT_BUCKETS


def linearizable_get(proc: ServerProc, key: bytes, timeout: float) -> pb.RangeResponse:
    with grpc.insecure_channel(proc.endpoint) as ch:
        return rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=key), timeout=timeout)


def test_read_index_counters(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    bases = with_metrics(c)
    c.start()
    try:
        leader = c.leader()
        follower = c.followers()[0]
        old = c.member_id(leader)
        base = bases[follower.name]
        assert count(scrape(base), "etcd_server_read_indexes_failed_total") == 0

        # A read asked of a leader that stops answering: when another leader comes in, the
        # round is counted failed (as etcd's "leader changed") and the read is answered by
        # the new leader, well before the request timeout (5 s + 2 election timeouts).
        leader.signal(signal.SIGSTOP)
        try:
            result: list[object] = []
            reader = threading.Thread(target=lambda: result.append(
                _attempt(lambda: linearizable_get(follower, b"k", 30))), daemon=True)
            reader.start()
            wait_for(lambda: status(follower).leader not in (0, old), 30, "a new leader")
            reader.join(30)
            assert result and isinstance(result[0], pb.RangeResponse), result
            assert count(scrape(base), "etcd_server_read_indexes_failed_total") >= 1
        finally:
            leader.signal(signal.SIGCONT)

        # No quorum: the read times out, which etcd counts as a slow read index
        lone = c.procs[0]
        for p in c.procs[1:]:
            p.stop()
        slow_before = count(scrape(bases[lone.name]), "etcd_server_slow_read_indexes_total")
        with pytest.raises(grpc.RpcError) as e:
            linearizable_get(lone, b"k", 30)
        assert e.value.details() == "etcdserver: request timed out"
        assert count(scrape(bases[lone.name]), "etcd_server_slow_read_indexes_total") \
            == slow_before + 1
        assert families(scrape(bases[lone.name]))["etcd_server_slow_read_indexes"][0] == "counter"
    finally:
        c.stop()


def _attempt(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except grpc.RpcError as e:
        return e
