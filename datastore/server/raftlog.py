"""The durable raft log: ``raft.Storage`` over RocksDB, with an in-memory tail.

Entries live in the ``raft_log`` column family keyed by big-endian index; hard state,
conf state and the snapshot point in ``raft_state``. ``save`` writes one Ready's worth
(snapshot, entries, hard state) in a single synced WriteBatch: one fsync per batch of
proposals, never one per request. Entries since the last compaction are also kept in
memory, so the leader serves followers and ``term()`` without touching disk.
"""

from __future__ import annotations

from collections.abc import Callable

from datastore.api.raftpb import raft_pb2 as pb
from datastore.raft.types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from datastore.server import codec
from datastore.storage.backend import Backend

HARD_STATE = b"hardstate"
CONF_STATE = b"confstate"
SNAPSHOT_META = b"snapshot"


def _ikey(i: int) -> bytes:
    return i.to_bytes(8, "big")


class DurableStorage:
    """Implements ``datastore.raft.storage.Storage``."""

    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self._log = backend.handle("raft_log")
        self._state = backend.handle("raft_state")
        hs = backend.get("raft_state", HARD_STATE)
        self.hard_state = codec.hard_state_from_pb(pb.HardState.FromString(hs)) if hs else HardState()
        cs = backend.get("raft_state", CONF_STATE)
        self.conf_state = codec.conf_state_from_pb(pb.ConfState.FromString(cs)) if cs else ConfState()
        sm = backend.get("raft_state", SNAPSHOT_META)
        self.snap_meta = (
            codec.snapshot_from_pb(pb.Snapshot.FromString(sm)).metadata if sm else SnapshotMetadata()
        )
        # _ents[0] is the entry at snap_meta.index + 1
        self._ents: list[Entry] = [codec.decode_entry(v) for _, v in
                                   backend.scan("raft_log", _ikey(self.snap_meta.index + 1))]
        # Multi-member clusters: produces the snapshot a leader sends (state image at the
        # applied index); without it, the bare compaction point (single member).
        self.snapshot_source: Callable[[], Snapshot] | None = None

    @property
    def is_empty(self) -> bool:
        return self.hard_state == HardState() and not self._ents and self.snap_meta.index == 0

    # ---- raft.Storage ------------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self.conf_state

    def first_index(self) -> int:
        return self.snap_meta.index + 1

    def last_index(self) -> int:
        return self.snap_meta.index + len(self._ents)

    def term(self, i: int) -> int:
        off = self.snap_meta.index
        if i == off:
            return self.snap_meta.term
        if i < off:
            raise CompactedError(i)
        if i > off + len(self._ents):
            raise UnavailableError(i)
        return self._ents[i - off - 1].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        off = self.snap_meta.index
        if lo <= off:
            raise CompactedError(lo)
        if hi > off + len(self._ents) + 1:
            raise UnavailableError(hi)
        ents = self._ents[lo - off - 1:hi - off - 1]
        if max_size is not None and len(ents) > 1:
            size, n = 0, 0
            for n, e in enumerate(ents):
                size += len(e.data) + 16
                if size > max_size and n > 0:
                    break
            else:
                n = len(ents)
            ents = ents[:n]
        return ents

    def snapshot(self) -> Snapshot:
        if self.snapshot_source is not None:
            return self.snapshot_source()
        return Snapshot(b"", self.snap_meta)

    # ---- writes (driver side) -------------------------------------------------------------
    def save(self, hard_state: HardState | None, entries: tuple[Entry, ...],
             snapshot: Snapshot | None, sync: bool = True) -> None:
        wb = self.b.batch()
        if snapshot is not None and not snapshot.is_empty:
            self._apply_snapshot(snapshot, wb)
        if entries:
            first = entries[0].index
            last_old = self.last_index()
            off = self.snap_meta.index
            if first <= last_old:  # a new leader overwrote our uncommitted tail
                del self._ents[first - off - 1:]
                wb.delete_range(_ikey(first), _ikey(last_old + 1), self._log)
            for e in entries:
                wb.put(_ikey(e.index), codec.encode_entry(e), self._log)
            self._ents.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state
            wb.put(HARD_STATE, codec.hard_state_to_pb(hard_state).SerializeToString(), self._state)
        self.b.write(wb, sync=sync)

    def adopt_snapshot(self, meta: SnapshotMetadata) -> None:
        """Record a snapshot whose state image is already installed (crash recovery).

        The hard state's commit moves to the snapshot; if the snapshot is from a later
        term than the persisted one, the term moves too and the vote is cleared (no vote
        in that term was ever persisted, so none was promised).
        """
        hs = self.hard_state
        term, vote = (hs.term, hs.vote) if hs.term >= meta.term else (meta.term, 0)
        self.save(HardState(term, vote, max(hs.commit, meta.index)), (),
                  Snapshot(b"", meta), True)

    def _apply_snapshot(self, snap: Snapshot, wb: object) -> None:
        # Raft restores a snapshot only when its log does not contain the snapshot's
        # entry: every entry we hold is from another history (or before it). Discard
        # them all, on disk too, as etcd's storage does.
        self.snap_meta = snap.metadata
        self._ents = []
        wb.delete_range(_ikey(0), b"\xff" * 9, self._log)  # type: ignore[attr-defined]
        self.set_conf_state(snap.metadata.conf_state, wb)
        self._put_snap_meta(wb)

    def _put_snap_meta(self, wb: object) -> None:
        raw = codec.snapshot_to_pb(Snapshot(b"", self.snap_meta)).SerializeToString()
        wb.put(SNAPSHOT_META, raw, self._state)  # type: ignore[attr-defined]

    def set_conf_state(self, cs: ConfState, wb: object | None = None) -> None:
        """Record the membership the log is at (bootstrap, conf changes, snapshots)."""
        self.conf_state = cs
        raw = codec.conf_state_to_pb(cs).SerializeToString()
        if wb is None:
            batch = self.b.batch()
            batch.put(CONF_STATE, raw, self._state)
            self.b.write(batch, sync=True)
        else:
            wb.put(CONF_STATE, raw, self._state)  # type: ignore[attr-defined]

    def compact(self, index: int, conf_state: ConfState) -> None:
        """Drop entries up to ``index`` (applied) and remember it as the snapshot point."""
        off = self.snap_meta.index
        if index <= off or index > self.last_index():
            return
        term = self.term(index)
        self.snap_meta = SnapshotMetadata(conf_state, index, term)
        del self._ents[:index - off]
        wb = self.b.batch()
        wb.delete_range(_ikey(0), _ikey(index + 1), self._log)
        self._put_snap_meta(wb)
        self.b.write(wb, sync=False)
