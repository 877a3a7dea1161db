"""A plain Range answered in wire form parses to exactly what range_in builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.mvcc.kvstore import KVStore
from datastore.server.applier import is_plain_range, range_in, range_wire
from datastore.storage.backend import Backend


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> KVStore:
    backend = Backend(Path(tmp_path_factory.mktemp("kv")) / "db")
    kv = KVStore(backend)
    wb = backend.batch()
    for i in range(40):
        txn = kv.write(wb)
        txn.put(b"k%02d" % (i % 25), b"v" * (i * 7), 0)
        txn.end()
    txn = kv.write(wb)
    txn.delete_range(b"k03", b"k06")
    txn.end()
    backend.write(wb, sync=False)
    kv.flushed()
    return kv


CASES = [
    rpc.RangeRequest(key=b"k01"),
    rpc.RangeRequest(key=b"nope"),
    rpc.RangeRequest(key=b"k", range_end=b"l"),
    rpc.RangeRequest(key=b"k", range_end=b"l", limit=5),
    rpc.RangeRequest(key=b"k", range_end=b"l", limit=100),
    rpc.RangeRequest(key=b"k", range_end=b"l", revision=20),
    rpc.RangeRequest(key=b"k", range_end=b"l", revision=20, limit=3),
    rpc.RangeRequest(key=b"k", range_end=b"l", count_only=True),
    rpc.RangeRequest(key=b"\0", range_end=b"\0"),
    rpc.RangeRequest(key=b"k04"),  # deleted
]


@pytest.mark.parametrize("r", CASES, ids=lambda r: str(r).replace("\n", " ") or "empty")
def test_wire_form_equals_range_in(store: KVStore, r: rpc.RangeRequest) -> None:
    assert is_plain_range(r)
    header = rpc.ResponseHeader(cluster_id=7, member_id=9, raft_term=3)
    wire = range_wire(store, r, header)
    expected = range_in(store, r)
    expected.header.MergeFrom(rpc.ResponseHeader(cluster_id=7, member_id=9, raft_term=3))
    assert rpc.RangeResponse.FromString(wire) == expected
    assert wire == expected.SerializeToString()  # canonical field order too


def test_sorted_filtered_and_keys_only_are_not_plain() -> None:
    assert not is_plain_range(rpc.RangeRequest(key=b"k", keys_only=True))
    assert not is_plain_range(rpc.RangeRequest(key=b"k", sort_order=rpc.RangeRequest.DESCEND))
    assert not is_plain_range(rpc.RangeRequest(key=b"k", sort_target=rpc.RangeRequest.MOD))
    assert not is_plain_range(rpc.RangeRequest(key=b"k", min_mod_revision=2))
