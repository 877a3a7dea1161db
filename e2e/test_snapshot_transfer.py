"""A snapshot transfer interrupted by kill -9, at either end or during the install.

Three members with a tiny raft log (small --snapshot-count and catch-up entries), so a
member that was down needs a snapshot. The test-only knobs make the leader stream the
image in many small chunks with a pause after each, so the transfer is in progress when
a test sees the receiver's first progress line, and the kill lands mid-transfer (what
each test then checks, a failed stream or a discarded partial image, needs an interrupted
transfer; no test asserts how fast the machine is). The sender is whoever the receiver names
(leadership may move on a loaded machine). Afterwards every member converges: the same
HashKV, every acknowledged write present. Every wait polls a condition.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cluster_util import (
    LAG_VALUE,
    SLOW_STREAM,
    SMALL_LOG,
    Cluster,
    hash_kv,
    lag_behind,
    log_has,
    log_lines,
    put,
    status,
    values,
    wait_for,
)
from e2e_util import target_is_etcd

from datastore.api.raftpb import raft_pb2, raft_pb2_grpc
from datastore.raft.types import ConfState, Message, MsgType, Snapshot, SnapshotMetadata
from datastore.server import codec
from datastore.server.snapshot_image import _REC
from datastore.testing.procs import ServerProc, datastore_proc

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="datastore clusters only")


def incoming(proc: ServerProc) -> list[str]:
    d = proc.data_dir / "snap-incoming"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def start_cluster(tmp_path: Path) -> Cluster:
    c = Cluster(tmp_path, extra=SMALL_LOG)
    for p in c.procs:
        p.env.update(SLOW_STREAM)
    return c.start()


def start_receiving(c: Cluster, lagging: ServerProc) -> ServerProc:
    """Start the lagging member; once it has a chunk, return the member sending it."""
    ids = {f"{c.member_id(p):x}": p for p in c.procs if p is not lagging}
    lagging.launch()
    wait_for(lambda: log_has(lagging, "snapshot transfer progress", direction="receive"), 60,
             "the first snapshot chunk on the lagging member")
    return ids[str(log_lines(lagging, "receiving a snapshot")[-1]["frm"])]


def converged(c: Cluster, acked: dict[bytes, bytes]) -> None:
    procs = c.procs
    for p in procs:
        wait_for(lambda p=p: values(p, b"k/") == acked, 60, f"every acked write on {p.name}")
    wait_for(lambda: len({hash_kv(p) for p in procs}) == 1, 30, "HashKV equal on all members")
    wait_for(lambda: len({status(p).raftAppliedIndex for p in procs}) == 1, 30,
             "applied indexes equal")


def test_receiver_killed_mid_transfer_recovers(tmp_path: Path) -> None:
    c = start_cluster(tmp_path)
    acked: dict[bytes, bytes] = {}
    try:
        lagging, _ = lag_behind(c, acked)
        sender = start_receiving(c, lagging)
        lagging.kill()
        assert any(n.startswith("recv-") for n in incoming(lagging)), incoming(lagging)
        wait_for(lambda: log_has(sender, "sending a snapshot failed"), 30,
                 "the sender to see the transfer fail")
        for i in range(20):  # writes while it is down
            key = f"k/late{i:02d}".encode()
            put(c.leader(), key, LAG_VALUE)
            acked[key] = LAG_VALUE
        lagging.launch()
        lagging.wait_ready()
        assert log_has(lagging, "discarding snapshot images not installed")
        wait_for(lambda: log_has(lagging, "installed a snapshot from the leader"), 60,
                 "a new snapshot installed")
        converged(c, acked)
        assert incoming(lagging) == []
    finally:
        c.stop()


def test_sender_killed_mid_transfer_recovers(tmp_path: Path) -> None:
    c = start_cluster(tmp_path)
    acked: dict[bytes, bytes] = {}
    try:
        lagging, _ = lag_behind(c, acked)
        sender = start_receiving(c, lagging)
        sender.kill()
        wait_for(lambda: log_has(lagging, "receiving a snapshot failed"), 30,
                 "the receiver to drop the broken stream")
        # the other member takes over and sends a new snapshot
        survivors = [p for p in c.procs if p is not sender]
        c.wait_leader(survivors, timeout=30)
        new_leader = next(p for p in survivors if p is not lagging)
        wait_for(lambda: log_has(lagging, "installed a snapshot from the leader"), 60,
                 "the snapshot from the new leader installed")
        for i in range(20):
            key = f"k/late{i:02d}".encode()
            put(new_leader, key, LAG_VALUE)
            acked[key] = LAG_VALUE
        sender.launch()
        sender.wait_ready()
        converged(c, acked)
        assert incoming(lagging) == []
    finally:
        c.stop()


def test_crash_midway_through_install_recovers(tmp_path: Path) -> None:
    c = Cluster(tmp_path, extra=SMALL_LOG).start()
    acked: dict[bytes, bytes] = {}
    try:
        lagging, leader = lag_behind(c, acked)
        expected = hash_kv(leader)
        # some column families replaced, not all: the restart must finish the install
        lagging.env["DATASTORE_FAILPOINT"] = "snapshot-install-midway"
        lagging.launch()
        wait_for(lambda: lagging.popen is not None and lagging.popen.poll() is not None, 60,
                 "the member to crash at the failpoint")
        assert lagging.popen is not None and lagging.popen.returncode == 97
        # Alone, so no leader can send it another snapshot: what it serves after the
        # restart is what the interrupted install left (finished by the restart).
        others = [p for p in c.procs if p is not lagging]
        for p in others:
            p.stop()
        del lagging.env["DATASTORE_FAILPOINT"]
        lagging.launch()
        lagging.wait_ready()
        assert values(lagging, b"k/") == acked
        assert hash_kv(lagging) == expected
        assert log_has(lagging, "finishing an interrupted snapshot image install")
        for p in others:
            p.launch()
        for p in others:
            p.wait_ready()
        put(c.leader(), b"k/after", LAG_VALUE)
        acked[b"k/after"] = LAG_VALUE
        converged(c, acked)
    finally:
        c.stop()


def test_receiver_refuses_a_truncated_or_corrupt_image(tmp_path: Path) -> None:
    """Only a complete image whose checksum matches reaches raft; anything else is
    refused with DATA_LOSS and leaves no file behind (the stream could end cleanly when
    its sender dies, so the receiver must not trust the end of the stream)."""
    ds = datastore_proc(tmp_path, "one").start()
    try:
        put(ds, b"k/keep", LAG_VALUE)
        st = status(ds)
        mid, cid = st.header.member_id, st.header.cluster_id
        meta = SnapshotMetadata(ConfState(voters=(mid,)), index=10_000, term=10_000)
        msg = Message(type=MsgType.MsgSnap, to=mid, frm=12345, term=10_000,
                      snapshot=Snapshot(b"x", meta))
        head = raft_pb2.SnapshotChunk(cluster_id=cid, message=codec.message_to_pb(msg))
        data = _REC.pack(0, 3, 1) + b"abc" + b"v"
        bad_sum = raft_pb2.SnapshotChunk(done=True, sha256=b"0" * 32, total_bytes=len(data))
        for tail in ([], [bad_sum]):
            with grpc.insecure_channel(f"127.0.0.1:{ds.peer_port}") as ch:
                stub = raft_pb2_grpc.RaftTransportStub(ch)
                chunks = [head, raft_pb2.SnapshotChunk(data=data), *tail]
                with pytest.raises(grpc.RpcError) as ei:
                    stub.SendSnapshot(iter(chunks), timeout=10)
                assert ei.value.code() == grpc.StatusCode.DATA_LOSS
        assert values(ds, b"k/") == {b"k/keep": LAG_VALUE}
        assert status(ds).leader == mid
        assert incoming(ds) == []
    finally:
        ds.stop()
