"""The MVCC store against a naive model: a dict of every revision's full state.

Hypothesis drives random puts, deletes, compactions and historical range reads; the
store must agree with the model on values, create/mod revisions, versions, counts and
errors at every revision that has not been compacted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from datastore import errors
from datastore.mvcc.key_index import KeyIndex
from datastore.mvcc.kvstore import KVStore
from datastore.storage.backend import Backend

KEYS = st.sampled_from([b"a", b"b", b"c", b"d"])
Entry = tuple[bytes, int, int, int]  # value, create_revision, mod_revision, version


def in_range(k: bytes, key: bytes, end: bytes | None) -> bool:
    """The index convention: None = just key, b"" = key and above, else [key, end)."""
    if end is None:
        return k == key
    return k >= key and (not end or k < end)


class StoreVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp: Path | None = None

    @initialize(data=st.data())
    def setup(self, data: st.DataObject) -> None:
        import tempfile

        self.backend = Backend(Path(tempfile.mkdtemp()) / "state")
        self.store = KVStore(self.backend)
        self.history: dict[int, dict[bytes, Entry]] = {1: {}}
        self.rev = 1
        self.compacted = -1

    def teardown(self) -> None:
        if hasattr(self, "backend"):
            self.backend.close()

    def _commit(self, txn: object, wb: object) -> None:
        self.backend.write(wb, sync=False)  # type: ignore[arg-type]
        self.store.flushed()

    @rule(key=KEYS, value=st.binary(max_size=3))
    def put(self, key: bytes, value: bytes) -> None:
        wb = self.backend.batch()
        txn = self.store.write(wb)
        rev = txn.put(key, value, 0)
        txn.end()
        self._commit(txn, wb)
        state = dict(self.history[self.rev])
        old = state.get(key)
        state[key] = (value, old[1] if old else rev, rev, old[3] + 1 if old else 1)
        self.rev = rev
        self.history[rev] = state

    @rule(key=KEYS, end=st.sampled_from([None, b"", b"c"]))
    def delete(self, key: bytes, end: bytes | None) -> None:
        wb = self.backend.batch()
        txn = self.store.write(wb)
        n, rev = txn.delete_range(key, end)
        txn.end()
        self._commit(txn, wb)
        state = dict(self.history[self.rev])
        gone = [k for k in state if in_range(k, key, end)]
        assert n == len(gone)
        if gone:
            for k in gone:
                del state[k]
            self.rev = rev
            self.history[rev] = state
        else:
            assert rev == self.rev

    @rule()
    def reopen(self) -> None:
        """A restart: the index (and its dead-key and latest-revision tracking, which the
        fast range path relies on) is rebuilt from disk alone."""
        self.store = KVStore(self.backend)
        list(self.store.restore())

    @precondition(lambda self: self.rev > 1)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        rev = data.draw(st.integers(0, self.rev))
        wb = self.backend.batch()
        if rev <= self.compacted:
            with pytest.raises(errors.ErrCompacted):
                self.store.compact(rev, wb)
            return
        self.store.compact(rev, wb)
        self.backend.write(wb, sync=False)
        self.compacted = rev

    @rule(data=st.data(), key=KEYS, end=st.sampled_from([None, b"", b"c", b"e"]),
          limit=st.integers(0, 3))
    def read(self, data: st.DataObject, key: bytes, end: bytes | None, limit: int) -> None:
        rev = data.draw(st.integers(0, self.rev + 1))
        if rev > self.rev:
            with pytest.raises(errors.ErrFutureRev):
                self.store.range(key, end, rev)
            return
        at = rev or self.rev
        if at < self.compacted:
            with pytest.raises(errors.ErrCompacted):
                self.store.range(key, end, rev)
            return
        state = self.history[max(r for r in self.history if r <= at)]
        want = sorted((k, v) for k, v in state.items() if in_range(k, key, end))
        # past reads: with the keys written since (default) or asking every key's history
        self.store.max_changes_scan = data.draw(st.sampled_from([10_000, 0]))
        got = self.store.range(key, end, rev, limit)
        assert got.count == len(want)
        assert got.rev == self.rev
        expect = want[:limit] if limit else want
        assert [(kv.key, (kv.value, kv.create_revision, kv.mod_revision, kv.version))
                for kv in got.kvs] == expect

    @invariant()
    def revision_matches(self) -> None:
        if hasattr(self, "store"):
            assert self.store.current_rev == self.rev


TestStoreVsModel = StoreVsModel.TestCase
TestStoreVsModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_key_index_worked_example() -> None:
    """The example in key_index.py's docstring, step by step."""
    ki = KeyIndex(b"k")
    ki.put((1, 0))
    ki.put((2, 0))
    ki.tombstone((3, 0))
    ki.put((4, 0))
    ki.tombstone((5, 0))
    assert ki.get(2) == ((2, 0), (1, 0), 2)
    assert ki.get(3) is None and ki.get(4) == ((4, 0), (4, 0), 1)
    keep: set[tuple[int, int]] = set()
    ki.compact(2, keep)
    assert keep == {(2, 0)} and [g.revs for g in ki.generations] == [[(2, 0), (3, 0)],
                                                                     [(4, 0), (5, 0)], []]
    keep.clear()
    ki.compact(4, keep)
    assert keep == {(4, 0)} and [g.revs for g in ki.generations] == [[(4, 0), (5, 0)], []]
    keep.clear()
    ki.compact(5, keep)
    assert keep == set() and ki.is_empty


def test_restore_rebuilds_index(tmp_path: Path) -> None:
    b = Backend(tmp_path / "s")
    s = KVStore(b)
    wb = b.batch()
    txn = s.write(wb)
    txn.put(b"x", b"1", 7)
    txn.put(b"y", b"2", 0)
    txn.end()
    wb2 = b.batch()
    b.write(wb, sync=False)
    t2 = s.write(wb2)
    t2.delete_range(b"y", None)
    t2.end()
    b.write(wb2, sync=False)
    del s, txn, t2  # the store holds column-family handles that keep the DB open
    b.close()
    b = Backend(tmp_path / "s")
    s2 = KVStore(b)
    leased = list(s2.restore())
    assert [(kv.key, kv.lease) for kv in leased] == [(b"x", 7)]
    assert s2.current_rev == 3
    assert [kv.key for kv in s2.range(b"", b"").kvs] == [b"x"]
    assert s2.range(b"y", None, 2).kvs[0].value == b"2"
    b.close()


def test_compaction_removes_revisions_an_earlier_compaction_kept(tmp_path: Path) -> None:
    """x@2 survives compact(3) as x's value then; once x@4 supersedes it, compact(5)
    must delete it physically, as etcd's full rescan does (found by the HashKV soak)."""
    from datastore.mvcc.revision import bytes_to_rev

    b = Backend(tmp_path / "s")
    s = KVStore(b)

    def write(fn: object) -> None:
        wb = b.batch()
        txn = s.write(wb)
        fn(txn)  # type: ignore[operator]
        txn.end()
        b.write(wb, sync=False)
        s.flushed()

    def compact(rev: int) -> None:
        wb = b.batch()
        s.compact(rev, wb)
        b.write(wb, sync=False)
        s.compactions.run_all()  # the background deletion, to the end

    write(lambda t: t.put(b"x", b"1", 0))  # rev 2
    write(lambda t: t.put(b"y", b"1", 0))  # rev 3
    compact(3)
    assert {bytes_to_rev(k) for k, _ in b.scan("key", b"")} == {(2, 0), (3, 0)}
    write(lambda t: t.put(b"x", b"2", 0))  # rev 4
    write(lambda t: t.put(b"y", b"2", 0))  # rev 5
    compact(5)
    assert {bytes_to_rev(k) for k, _ in b.scan("key", b"")} == {(4, 0), (5, 0)}


def test_restore_after_compaction_keeps_create_revision_and_version(tmp_path: Path) -> None:
    """The creating revision may be compacted away; the stored KeyValue still knows it."""
    b = Backend(tmp_path / "s")
    s = KVStore(b)
    for value in (b"1", b"2", b"3"):  # revs 2, 3, 4: created at 2, version 3
        wb = b.batch()
        txn = s.write(wb)
        txn.put(b"x", value, 0)
        txn.end()
        b.write(wb, sync=False)
        s.flushed()
    wb = b.batch()
    s.compact(3, wb)  # drops rev 2, the creation
    b.write(wb, sync=False)
    fresh = KVStore(b)
    list(fresh.restore())
    kv = fresh.range(b"x", None).kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (2, 4, 3)
    assert fresh.index.get(b"x").get(3) == ((3, 0), (2, 0), 2)  # type: ignore[union-attr]
    assert fresh.compact_rev == 3 and fresh.current_rev == 4
