"""The durable raft log: ``raft.Storage`` over RocksDB, with a bounded in-memory tail.

Entries live in the ``raft_log`` column family keyed by big-endian index; hard state,
conf state and the snapshot point in ``raft_state``. ``save`` writes one Ready's worth
(snapshot, entries, hard state) in a single synced WriteBatch: one fsync per batch of
proposals, never one per request.

Only the most recent entries are also kept in memory (``cache_bytes``, counted as data
plus a per-entry estimate of the Python objects), so the leader serves followers that keep
up, and the applier its committed entries, without touching disk, while the log on disk
may hold a whole ``--snapshot-count`` of entries. Older entries (a slow or restarted
follower's catch-up) and their terms are read back from RocksDB.

Threads: ``save`` runs in the raft I/O thread while the event loop reads (raft steps
messages during an fsync), so the cache's bounds and list change under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from datastore.api.raftpb import raft_pb2 as pb
from datastore.raft.storage import ENTRY_OVERHEAD, limit_size
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
from datastore.storage.backend import Backend, CorruptDataError

HARD_STATE = b"hardstate"
CONF_STATE = b"confstate"
SNAPSHOT_META = b"snapshot"
# The in-memory tail: far below the 32 MiB the raft log may hold in memory, whatever the
# snapshot count, and still thousands of entries (a follower a few seconds behind).
CACHE_BYTES = 8 << 20
# What one cached entry costs besides its data: the Entry (slots), the bytes object's
# header, two ints and the list slot, measured with tracemalloc on CPython 3.11 (~150).
ENTRY_MEMORY = 160


def _ikey(i: int) -> bytes:
    return i.to_bytes(8, "big")


def entry_memory(e: Entry) -> int:
    """Bytes one cached entry holds (its data plus the Python objects around it)."""
    return len(e.data) + ENTRY_MEMORY


class DurableStorage:
    """Implements ``datastore.raft.storage.Storage``."""

    def __init__(self, backend: Backend, cache_bytes: int = CACHE_BYTES) -> None:
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
        self.cache_limit = cache_bytes
        self._lock = threading.Lock()
        # The log on disk is [snap_meta.index + 1, _last]; _cache[0] is entry _cache_lo and
        # the cache always reaches _last (it may be empty: _cache_lo == _last + 1).
        self._last = self.snap_meta.index
        self._cache: list[Entry] = []
        self._cache_lo = self.snap_meta.index + 1
        self.cache_bytes = 0
        self.disk_read_entries = 0  # entries read back from disk (catch-up of a slow peer)
        self._load_tail()
        # Multi-member clusters: produces the snapshot a leader sends (state image at the
        # applied index); without it, the bare compaction point (single member).
        self.snapshot_source: Callable[[], Snapshot] | None = None

    def _load_tail(self) -> None:
        """Find the last entry on disk and read the newest ones, up to the cache budget."""
        first = self.snap_meta.index + 1
        tail: list[Entry] = []
        size = 0
        for _, v in self.b.scan_back("raft_log", _ikey(first)):
            e = codec.decode_entry(v)
            if tail and e.index != tail[-1].index - 1:
                raise CorruptDataError(f"raft log: entry {e.index} followed by {tail[-1].index}")
            size += entry_memory(e)
            if tail and size > self.cache_limit:
                break
            tail.append(e)
        tail.reverse()
        if tail:
            self._last = tail[-1].index
            self._cache, self._cache_lo = tail, tail[0].index
            self.cache_bytes = sum(entry_memory(e) for e in tail)

    @property
    def is_empty(self) -> bool:
        return self.hard_state == HardState() and self._last == 0 and self.snap_meta.index == 0

    @property
    def cache_entries(self) -> int:
        return len(self._cache)

    # ---- raft.Storage ------------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self.conf_state

    def first_index(self) -> int:
        return self.snap_meta.index + 1

    def last_index(self) -> int:
        return self._last

    def term(self, i: int) -> int:
        with self._lock:
            off = self.snap_meta.index
            if i == off:
                return self.snap_meta.term
            if i < off:
                raise CompactedError(i)
            if i > self._last:
                raise UnavailableError(i)
            if i >= self._cache_lo:
                return self._cache[i - self._cache_lo].term
        return self._read_term(i)

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        with self._lock:
            off = self.snap_meta.index
            if lo <= off:
                raise CompactedError(lo)
            if hi > self._last + 1:
                raise UnavailableError(hi)
            cache_lo = self._cache_lo
            if lo >= cache_lo:
                return limit_size(self._cache[lo - cache_lo:hi - cache_lo], max_size)
            cached = self._cache[:hi - cache_lo] if hi > cache_lo else []
        # Older than the cache: read back from disk (outside the lock: save may go on).
        ents = self._read(lo, min(hi, cache_lo), max_size)
        if cached and ents[-1].index == cache_lo - 1:
            ents = limit_size(ents + cached, max_size)
        return ents

    def _read(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        """Entries [lo, hi) from disk: at least one, then as many as fit ``max_size``."""
        out: list[Entry] = []
        size = 0
        for _, v in self.b.scan("raft_log", _ikey(lo), _ikey(hi)):
            e = codec.decode_entry(v)
            if e.index != lo + len(out):
                break  # a hole: reported below
            size += len(e.data) + ENTRY_OVERHEAD
            if out and max_size is not None and size > max_size:
                self.disk_read_entries += len(out)
                return out
            out.append(e)
        self.disk_read_entries += len(out)
        if len(out) == hi - lo:
            return out
        if lo <= self.snap_meta.index:
            raise CompactedError(lo)
        raise CorruptDataError(f"raft log: entry {lo + len(out)} missing on disk")

    def _read_term(self, i: int) -> int:
        raw = self.b.get("raft_log", _ikey(i))
        if raw is None:
            if i <= self.snap_meta.index:
                raise CompactedError(i)
            raise CorruptDataError(f"raft log: entry {i} missing on disk")
        return codec.decode_entry(raw).term

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
            last_old = self._last
            if first <= last_old:  # a new leader overwrote our uncommitted tail
                wb.delete_range(_ikey(first), _ikey(last_old + 1), self._log)
            for e in entries:
                wb.put(_ikey(e.index), codec.encode_entry(e), self._log)
        if hard_state is not None:
            wb.put(HARD_STATE, codec.hard_state_to_pb(hard_state).SerializeToString(), self._state)
        self.b.write(wb, sync=sync)
        # Visible to readers only once on disk: an entry read back must be durable.
        if entries:
            self._cache_append(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def _cache_append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        first = entries[0].index
        with self._lock:
            cache = self._cache
            if first <= self._last:  # the overwritten tail goes
                if first >= self._cache_lo:
                    k = first - self._cache_lo
                    self.cache_bytes -= sum(entry_memory(e) for e in cache[k:])
                    del cache[k:]
                else:
                    cache.clear()
                    self._cache_lo, self.cache_bytes = first, 0
            cache.extend(entries)
            self.cache_bytes += sum(entry_memory(e) for e in entries)
            self._last = entries[-1].index
            if self.cache_bytes > self.cache_limit:
                # Drop the oldest down to 3/4 of the budget (one del per many appends).
                size, k = self.cache_bytes, 0
                while k < len(cache) - 1 and size > self.cache_limit * 3 // 4:
                    size -= entry_memory(cache[k])
                    k += 1
                del cache[:k]
                self._cache_lo += k
                self.cache_bytes = size

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
        with self._lock:
            self.snap_meta = snap.metadata
            self._cache, self._cache_lo, self.cache_bytes = [], snap.metadata.index + 1, 0
            self._last = snap.metadata.index
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
        if index <= off or index > self._last:
            return
        term = self.term(index)
        with self._lock:
            self.snap_meta = SnapshotMetadata(conf_state, index, term)
            if index >= self._cache_lo:
                k = index + 1 - self._cache_lo
                self.cache_bytes -= sum(entry_memory(e) for e in self._cache[:k])
                self._cache = self._cache[k:]
                self._cache_lo = index + 1
        wb = self.b.batch()
        wb.delete_range(_ikey(0), _ikey(index + 1), self._log)
        self._put_snap_meta(wb)
        self.b.write(wb, sync=False)

