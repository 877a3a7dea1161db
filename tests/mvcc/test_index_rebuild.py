"""The key index rebuilt from disk in one pass (start-up, snapshot install) against a
naive rebuild: every record parsed and replayed through the index's own put/tombstone.

Hypothesis writes random histories (puts with and without leases, deletes, re-creations,
compactions that leave lone tombstones and drop early revisions); both rebuilds must give
the same histories, dead keys, newest revision, current revision and leased keys.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from datastore.api.mvccpb.kv_pb2 import KeyValue
from datastore.mvcc.index import TreeIndex
from datastore.mvcc.kvstore import KVStore
from datastore.mvcc.revision import bytes_to_rev, is_tombstone
from datastore.storage.backend import Backend

KEYS = [b"a", b"b", b"c", b"d", b"e"]
OP = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.sampled_from([0, 0, 7, 9])),
    st.tuples(st.just("del"), st.sampled_from(KEYS), st.just(0)),
    st.tuples(st.just("compact"), st.just(b""), st.integers(0, 100)),
)


def naive(backend: Backend) -> tuple[TreeIndex, dict[bytes, int], int]:
    """The rebuild as written before the one-pass loop: one sorted insertion per key."""
    index = TreeIndex()
    leases: dict[bytes, int] = {}
    cur = 0
    for rk, raw in backend.scan("key", b""):
        kv = KeyValue.FromString(raw)
        rev = bytes_to_rev(rk)
        cur = max(cur, rev[0])
        ki = index.get(kv.key)
        if is_tombstone(rk):
            leases.pop(kv.key, None)
            if ki is not None:
                index.tombstone(ki, rev)
            continue
        leases[kv.key] = kv.lease
        if ki is None:
            ki = index.get_or_create(kv.key)
            ki.restore((kv.create_revision, 0), rev, kv.version)
            index.latest = max(index.latest, rev[0])
        else:
            index.put(ki, rev)
    return index, {k: v for k, v in leases.items() if v}, cur


def shape(index: TreeIndex) -> tuple[object, ...]:
    """Every key's generations (create revision, revisions, version), dead keys, newest."""
    return ([(ki.key, ki.generations) for ki in index.scan(b"\x00", b"")], list(index._dead),
            index.latest, len(index))


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(OP, max_size=40))
def test_one_pass_rebuild_matches_naive(tmp_path_factory: object, ops: list) -> None:
    path = Path(tmp_path_factory.mktemp("rebuild")) / "state"  # type: ignore[attr-defined]
    be = Backend(path)
    try:
        kv = KVStore(be)
        for op, key, arg in ops:
            b = be.batch()
            if op == "compact":
                rev = arg % (kv.current_rev + 1)
                if rev <= kv.compact_rev:
                    continue
                kv.compact(rev, b)
                be.write(b, False)
                kv.compactions.run_all()  # deletes the old revisions: lone tombstones stay
                continue
            tx = kv.write(b)
            if op == "put":
                tx.put(key, b"v", arg)
            else:
                tx.delete_range(key, None)
            tx.end()
            be.write(b, False)
            kv.flushed()
        fresh = KVStore(be)
        leased = {x.key: x.lease for x in fresh.restore()}
        index, want_leases, cur = naive(be)
        assert shape(fresh.index) == shape(index)
        assert leased == want_leases
        assert fresh.current_rev == kv.current_rev == max(cur, fresh.compact_rev, 1)
    finally:
        be.close()
