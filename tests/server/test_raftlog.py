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
