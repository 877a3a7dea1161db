"""DurableStorage: snapshots replace the whole log (on disk too); a snapshot whose state
image was installed before a crash is adopted on restart."""

from __future__ import annotations

from pathlib import Path

from datastore.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata
from datastore.server.raftlog import DurableStorage
from datastore.storage.backend import WAL_FAMILIES, Backend


def _open(path: Path) -> tuple[Backend, DurableStorage]:
    b = Backend(path, WAL_FAMILIES)
    return b, DurableStorage(b)


def test_snapshot_discards_every_older_entry_on_disk(tmp_path: Path) -> None:
    b, st = _open(tmp_path / "wal")
    ents = tuple(Entry(term=1, index=i, data=b"x") for i in range(1, 21))
    st.save(HardState(1, 1, 5), ents, None)
    meta = SnapshotMetadata(ConfState(voters=(1, 2)), 10, 2)  # term differs from our log
    st.save(HardState(2, 0, 10), (), Snapshot(b"", meta))
    assert (st.first_index(), st.last_index()) == (11, 10)
    del st  # it holds column-family handles that keep the database open
    b.close()
    b, st = _open(tmp_path / "wal")
    assert (st.first_index(), st.last_index()) == (11, 10)
    assert st.term(10) == 2 and st.conf_state == ConfState(voters=(1, 2))
    del st  # it holds column-family handles that keep the database open
    b.close()


def test_adopt_snapshot_moves_commit_and_term(tmp_path: Path) -> None:
    b, st = _open(tmp_path / "wal")
    st.save(HardState(2, 7, 3), tuple(Entry(term=2, index=i) for i in (1, 2, 3)), None)
    st.adopt_snapshot(SnapshotMetadata(ConfState(voters=(7,)), 40, 5))
    del st  # it holds column-family handles that keep the database open
    b.close()
    b, st = _open(tmp_path / "wal")
    assert st.hard_state == HardState(5, 0, 40)  # later term: the vote is not carried over
    assert (st.first_index(), st.last_index(), st.term(40)) == (41, 40, 5)
    st.adopt_snapshot(SnapshotMetadata(ConfState(voters=(7,)), 50, 4))
    assert st.hard_state == HardState(5, 0, 50)  # older term: the term and vote stay
    del st  # it holds column-family handles that keep the database open
    b.close()


def _ents(lo: int, hi: int, term: int = 1, size: int = 200) -> tuple[Entry, ...]:
    return tuple(Entry(term=term, index=i, data=i.to_bytes(4, "big") * (size // 4))
                 for i in range(lo, hi))


def test_memory_stays_bounded_and_older_entries_come_back_from_disk(tmp_path: Path) -> None:
    budget = 64 << 10
    b = Backend(tmp_path / "wal", WAL_FAMILIES)
    st = DurableStorage(b, cache_bytes=budget)
    written = _ents(1, 3001)
    for lo in range(0, 3000, 50):
        st.save(HardState(1, 1, lo), written[lo:lo + 50], None, sync=False)
        assert st.cache_bytes <= budget
    assert st.cache_entries < 1000 and st.last_index() == 3000
    assert st.entries(1, 3001) == list(written)  # disk, then the cache
    assert st.entries(10, 3001, max_size=10 * 216) == list(written[9:19])
    assert st.term(1) == 1 and st.term(2999) == 1
    # a new leader overwrites a tail that starts on disk (below the cache)
    st.save(HardState(2, 2, 100), _ents(500, 600, term=2), None, sync=False)
    assert st.last_index() == 599 and st.term(499) == 1 and st.term(550) == 2
    assert st.entries(450, 600) == list(written[449:499] + _ents(500, 600, term=2))
    st.compact(300, ConfState(voters=(1,)))
    assert st.first_index() == 301 and st.entries(301, 302) == [written[300]]
    del st
    b.close()
    b = Backend(tmp_path / "wal", WAL_FAMILIES)
    st = DurableStorage(b, cache_bytes=budget)  # restart: only the newest entries loaded
    assert 0 < st.cache_bytes <= budget and (st.first_index(), st.last_index()) == (301, 599)
    assert st.entries(301, 600) == list(written[300:499] + _ents(500, 600, term=2))
    del st
    b.close()
