"""Background compaction against an uninterrupted twin.

Hypothesis drives the same puts, deletes and compactions into two stores. The twin
finishes every compaction at once. The store under test deletes in small batches, may
be reopened (a crash: the in-memory queue is lost, the markers on disk remain) at any
point, and takes more writes while a deletion is half done. At every step both agree on
HashKV at every revision not compacted; whenever the store under test has no deletion
pending, its ``key`` family is byte-for-byte the twin's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from datastore import errors
from datastore.mvcc.compaction import META_FINISHED, META_SCHEDULED, from_i64
from datastore.mvcc.kvstore import KVStore
from datastore.storage.backend import Backend

KEYS = st.sampled_from([b"a", b"b", b"c"])


def _write(b: Backend, s: KVStore, fn: object) -> None:
    wb = b.batch()
    txn = s.write(wb)
    fn(txn)  # type: ignore[operator]
    txn.end()
    b.write(wb, sync=False)
    s.flushed()


class BackgroundVsTwin(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        root = Path(tempfile.mkdtemp())
        self.b, self.tb = Backend(root / "bg"), Backend(root / "twin")
        self.s, self.t = KVStore(self.b), KVStore(self.tb)
        self.rev = 1

    def teardown(self) -> None:
        if hasattr(self, "b"):
            del self.s, self.t
            self.b.close()
            self.tb.close()

    def _both(self, fn: object) -> None:
        _write(self.b, self.s, fn)
        _write(self.tb, self.t, fn)
        self.rev = self.s.current_rev

    @rule(key=KEYS, value=st.binary(max_size=2))
    def put(self, key: bytes, value: bytes) -> None:
        self._both(lambda txn: txn.put(key, value, 0))

    @rule(key=KEYS, end=st.sampled_from([None, b""]))
    def delete(self, key: bytes, end: bytes | None) -> None:
        self._both(lambda txn: txn.delete_range(key, end))

    @precondition(lambda self: self.rev > max(self.s.compact_rev, 1))
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        rev = data.draw(st.integers(max(self.s.compact_rev + 1, 1), self.rev))
        for b, s in ((self.b, self.s), (self.tb, self.t)):
            wb = b.batch()
            s.compact(rev, wb)
            b.write(wb, sync=False)
        self.t.compactions.run_all()
        assert from_i64(self.b.get("meta", META_SCHEDULED), -1) == rev

    @precondition(lambda self: self.s.compactions.pending)
    @rule(limit=st.integers(1, 3))
    def step(self, limit: int) -> None:
        self.s.compactions.batch_limit = limit
        self.s.compactions.step()

    @rule()
    def crash_and_reopen(self) -> None:
        self.s = KVStore(self.b)
        list(self.s.restore())
        assert self.s.compact_rev == self.t.compact_rev

    @invariant()
    def hashes_agree(self) -> None:
        if not hasattr(self, "s"):
            return
        assert self.s.current_rev == self.t.current_rev
        for rev in range(max(self.t.compact_rev + 1, 1), self.rev + 1):
            assert self.s.hash_kv(rev) == self.t.hash_kv(rev), rev

    @invariant()
    def same_data_once_finished(self) -> None:
        if not hasattr(self, "s") or self.s.compactions.pending:
            return
        assert list(self.b.scan("key", b"")) == list(self.tb.scan("key", b""))
        assert self.b.get("meta", META_FINISHED) == self.tb.get("meta", META_FINISHED)


TestBackgroundVsTwin = BackgroundVsTwin.TestCase
TestBackgroundVsTwin.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_reads_below_the_compaction_fail_before_the_deletion_runs(tmp_path: Path) -> None:
    b = Backend(tmp_path / "s")
    s = KVStore(b)
    for v in (b"1", b"2", b"3"):  # revs 2, 3, 4
        _write(b, s, lambda txn, v=v: txn.put(b"x", v, 0))
    wb = b.batch()
    s.compact(4, wb)
    b.write(wb, sync=False)
    assert s.compactions.pending and len(list(b.scan("key", b""))) == 3  # nothing deleted yet
    with pytest.raises(errors.ErrCompacted):
        s.range(b"x", None, 3)
    assert s.range(b"x", None).kvs[0].value == b"3"
    s.compactions.run_all()
    assert len(list(b.scan("key", b""))) == 1
    assert from_i64(b.get("meta", META_FINISHED), -1) == 4
    del s
    b.close()
