"""KV.RangeStream (etcd 3.7's chunked Range, which kube-apiserver 1.37 lists with) against
real etcd 3.7 as the oracle: the same writes on both, then the same stream requests; the
chunks (how many, which keys in each, where header/more/count appear), and the errors
must match, after zeroing only the header's cluster_id / member_id / raft_term."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing import refs
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc

R = pb.RangeRequest


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[ServerProc, ServerProc]]:
    oracle = etcd_proc(tmp_path, "etcd37")
    oracle.argv[0] = str(refs.binary("etcd37"))  # RefError says how to build it
    target = datastore_proc(tmp_path, "ds")
    started: list[ServerProc] = []
    try:
        for p in (oracle, target):
            started.append(p)
            p.start()
        yield oracle, target
    finally:
        for p in started:
            p.stop()


def stream(p: ServerProc, req: pb.RangeRequest) -> list[str]:
    """The stream as comparable lines: one per chunk, or the error ending it."""
    out = []
    try:
        for chunk in rpc_pb2_grpc.KVStub(p.channel()).RangeStream(req, timeout=30):
            rr = chunk.range_response
            if rr.HasField("header"):
                rr.header.cluster_id = rr.header.member_id = rr.header.raft_term = 0
            values = sum(len(kv.value) for kv in rr.kvs)
            out.append(f"keys={[kv.key.decode() for kv in rr.kvs]} values={values}"
                       f" header={rr.header.revision if rr.HasField('header') else None}"
                       f" more={rr.more} count={rr.count}")
    except grpc.RpcError as e:
        out.append(f"error {e.code().name}: {e.details()}")
    return out


def test_range_stream_matches_etcd_37(servers: tuple[ServerProc, ServerProc]) -> None:
    # 300 keys (values up to 20 KB, so chunks grow and then hold near the size target),
    # some rewritten, a few outside the prefix
    for p in servers:
        kv = rpc_pb2_grpc.KVStub(p.channel())
        for i in range(300):
            kv.Put(pb.PutRequest(key=b"/pods/%04d" % i, value=b"v" * (i * 67 % 20_000)))
        for i in range(0, 300, 7):
            kv.Put(pb.PutRequest(key=b"/pods/%04d" % i, value=b"w%d" % i))
        kv.Put(pb.PutRequest(key=b"/pods0", value=b"outside"))
        kv.Put(pb.PutRequest(key=b"/nodes/a", value=b"n"))
    prefix = {"key": b"/pods/", "range_end": b"/pods0"}
    cases = {
        "whole prefix": R(**prefix),
        "serializable": R(**prefix, serializable=True),
        "limit under the first chunk": R(**prefix, limit=4),
        "limit across chunks": R(**prefix, limit=95),
        "limit = size": R(**prefix, limit=300),
        "at an old revision": R(**prefix, revision=150),
        "keys only": R(**prefix, keys_only=True),
        "count only": R(**prefix, count_only=True),
        "count only with limit": R(**prefix, count_only=True, limit=3),
        "key ascending is the default order": R(**prefix, sort_target=R.KEY, sort_order=R.ASCEND),
        "one key": R(key=b"/pods/0042"),
        "missing key": R(key=b"/pods/none"),
        "everything": R(key=b"\x00", range_end=b"\x00"),
        "empty range": R(key=b"/q/", range_end=b"/q0"),
        "future revision": R(**prefix, revision=10_000),
        "no key": R(),
        "other order": R(**prefix, sort_target=R.MOD, sort_order=R.DESCEND),
        "key descending": R(**prefix, sort_target=R.KEY, sort_order=R.DESCEND),
        "revision filter": R(**prefix, min_mod_revision=5),
    }
    oracle, target = servers
    for name, req in cases.items():
        want, got = stream(oracle, req), stream(target, req)
        assert got == want, f"{name}: datastore\n" + "\n".join(got) + "\netcd 3.7\n" + "\n".join(want)
    assert len(stream(target, cases["whole prefix"])) > 3  # the sizes did make several chunks


def test_range_stream_after_compaction(servers: tuple[ServerProc, ServerProc]) -> None:
    for p in servers:
        kv = rpc_pb2_grpc.KVStub(p.channel())
        for i in range(20):
            kv.Put(pb.PutRequest(key=b"k%02d" % i, value=b"v"))
        kv.Compact(pb.CompactionRequest(revision=15))
    req = R(key=b"k", range_end=b"l", revision=10)
    assert stream(servers[1], req) == stream(servers[0], req)
    assert stream(servers[1], req)[0].startswith("error OUT_OF_RANGE")


def test_range_stream_reads_at_one_revision(servers: tuple[ServerProc, ServerProc]) -> None:
    """Writes made while a stream is part-read are not in its later chunks: 20 MB of values
    is more than gRPC buffers, so the server is still reading when the writes land."""
    req = R(key=b"/big/", range_end=b"/big0")
    seen = []
    for p in servers:
        kv = rpc_pb2_grpc.KVStub(p.channel())
        for i in range(200):
            kv.Put(pb.PutRequest(key=b"/big/%03d" % i, value=b"a" * 100_000))
        chunks = rpc_pb2_grpc.KVStub(p.channel()).RangeStream(req, timeout=60)
        first = next(chunks).range_response
        kv.Put(pb.PutRequest(key=b"/big/199", value=b"changed"))
        kv.Put(pb.PutRequest(key=b"/big/200", value=b"new"))
        kvs = [*first.kvs, *(kv for c in chunks for kv in c.range_response.kvs)]
        seen.append([(kv.key, len(kv.value), kv.mod_revision) for kv in kvs])
    assert seen[1] == seen[0]
    assert seen[1][-1][:2] == (b"/big/199", 100_000) and len(seen[1]) == 200
