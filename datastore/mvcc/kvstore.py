"""The MVCC key-value store: etcd's revision semantics over the RocksDB ``key`` family.

Reads go through the in-memory ``TreeIndex`` to find revisions, then fetch the
``mvccpb.KeyValue`` stored under that revision. Writes happen in a ``WriteTxn``: every
change of one transaction shares a main revision (sub = 0, 1, 2, ...), the revision only
advances if something changed, and all changes land in the caller's ``WriteBatch``
together with the applied index (see ``datastore.server.applier``). Until that batch is
written, values live in an overlay so later transactions in the same batch see them.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rocksdict import WriteBatch

from datastore import errors
from datastore.api.mvccpb.kv_pb2 import Event, KeyValue
from datastore.mvcc.compaction import META_SCHEDULED, Compactions
from datastore.mvcc.index import TreeIndex
from datastore.mvcc.key_index import KeyIndex
from datastore.mvcc.revision import (
    REV_BYTES_LEN,
    Revision,
    bytes_to_rev,
    is_tombstone,
    main_rev_prefix,
    rev_to_bytes,
)
from datastore.storage.backend import Backend

log = logging.getLogger("datastore.mvcc")

META_CURRENT_REV = b"current_rev"
_I64 = 8


def _i64(v: int) -> bytes:
    return v.to_bytes(_I64, "big", signed=True)


def _from_i64(b: bytes | None) -> int:
    return int.from_bytes(b, "big", signed=True) if b else 0


@dataclass(slots=True)
class RangeResult:
    kvs: list[KeyValue]
    count: int
    rev: int


@dataclass(slots=True)
class RawRangeResult:
    kvs: list[bytes]  # serialized mvccpb.KeyValue messages
    count: int
    rev: int


_REV_HEAD = struct.Struct(">Q1sQ")


def _rebuild(records: Iterable[tuple[bytes, bytes]]
             ) -> tuple[dict[bytes, KeyIndex], dict[bytes, int], int, int]:
    """Every key's history from the ``key`` family's records, in revision order.

    Returns the histories (unsorted: the index sorts them once), the lease of every live
    key that has one, the newest revision recorded in them and the newest on disk. The
    oldest surviving revision of a key carries its create revision and version (older
    ones may be compacted away); a lone tombstone left by compaction says nothing.
    This loop is the whole cost of a rebuild (a learner's after a snapshot, every
    member's at start-up), so it keeps to locals and touches each record once.
    """
    keys: dict[bytes, KeyIndex] = {}
    leases: dict[bytes, int] = {}
    top = main = 0
    parse = KeyValue.FromString
    unpack = _REV_HEAD.unpack_from
    get = keys.get
    new = KeyIndex.from_disk
    for rk, raw in records:
        kv = parse(raw)
        key = kv.key
        main, _, sub = unpack(rk)
        ki = get(key)
        if len(rk) != REV_BYTES_LEN:  # tombstone
            if ki is not None:
                ki.tombstone((main, sub))
                top = main
                if leases:
                    leases.pop(key, None)
            continue
        if ki is None:
            keys[key] = new(key, kv.create_revision, main, sub, kv.version)
        else:
            ki.put((main, sub))
        top = main
        lease = kv.lease
        if lease:
            leases[key] = lease
        elif leases:
            leases.pop(key, None)
    return keys, leases, top, main


class LeaseHooks:
    """How the store tells the lessor which keys belong to which lease (no-op default)."""

    def attach(self, lease: int, key: bytes) -> None: ...
    def detach(self, lease: int, key: bytes) -> None: ...

    def lease_of(self, key: bytes) -> int | None:
        """The key's lease if the hooks track it; None: read it from the stored value."""
        return None


class KVStore:
    def __init__(self, backend: Backend, leases: LeaseHooks | None = None) -> None:
        self.backend = backend
        self.leases = leases or LeaseHooks()
        self.index = TreeIndex()
        self.current_rev = 1  # etcd starts at revision 1 with an empty store
        self.compact_rev = -1  # etcd's compactMainRev: -1 until the first compaction (even at 0)
        self._overlay: dict[bytes, bytes] = {}  # rev bytes -> KeyValue bytes, not yet written
        self._key_cf = backend.cf("key")
        self._key_handle = backend.handle("key")
        self._meta_handle = backend.handle("meta")
        # revisions a compaction dropped from the index, deleted from disk in the background
        self.compactions = Compactions(backend)
        # a read at a past revision lists the keys written since, up to this many writes
        self.max_changes_scan = 10_000
        # etcd's mvcc counters (range_total, put_total, ...), read when /metrics is scraped
        self.ranges = self.puts = self.deletes = self.txns = self.put_bytes = 0

    # ---- start-up -------------------------------------------------------------------
    def restore(self) -> Iterator[KeyValue]:
        """Rebuild the index from disk; yields live KeyValues that carry a lease.

        A compaction scheduled but not finished (crash, or a snapshot taken mid-way) is
        resumed: the index rebuilt from the half-compacted revisions is compacted again and
        the deletion queued from the start, as etcd's restore does.
        """
        self.current_rev = max(1, _from_i64(self.backend.get("meta", META_CURRENT_REV)))
        scheduled, finished = self.compactions.load_markers()
        self.compactions.reset(finished)
        self.compact_rev = scheduled
        keys, leases, top, last = _rebuild(self.backend.scan("key", b""))
        self.index.load(keys, top)
        self.current_rev = max(self.current_rev, last)
        self.current_rev = max(self.current_rev, self.compact_rev)
        if scheduled > finished:
            self.compactions.schedule(scheduled, self.index.compact(scheduled))
            log.info("resuming scheduled compaction", extra={
                "compact_revision": scheduled, "finished_compact_revision": finished})
        for key, lease in leases.items():
            yield KeyValue(key=key, lease=lease)

    # ---- reads ----------------------------------------------------------------------
    def _value(self, rev: Revision) -> KeyValue:
        rb = rev_to_bytes(*rev)
        raw = self._overlay.get(rb)
        if raw is None:
            raw = self._key_cf.get(rb)
            if raw is None:
                raise errors.ErrCorrupt()
        return KeyValue.FromString(raw)

    def range(self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0,
              count_only: bool = False, cur_rev: int | None = None) -> RangeResult:
        """etcd's rangeKeys: ``end`` uses the index convention (None/b""/bound)."""
        rr = self.range_raw(key, end, rev, limit, count_only, cur_rev)
        return RangeResult([KeyValue.FromString(raw) for raw in rr.kvs], rr.count, rr.rev)

    def range_raw(self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0,
                  count_only: bool = False, cur_rev: int | None = None) -> RawRangeResult:
        """range() with each KeyValue left as its stored bytes (no per-key objects)."""
        self.ranges += 1
        cur = self.current_rev if cur_rev is None else cur_rev
        if rev > cur:
            raise errors.ErrFutureRev()
        if rev <= 0:
            rev = cur
        if rev < self.compact_rev:
            raise errors.ErrCompacted()
        changed = self._changed_since(rev) if rev < self.index.latest else None
        pairs, total = self.index.revisions(key, end, rev, limit, count_only, changed)
        if count_only or not pairs:
            return RawRangeResult([], total, cur)
        rbs = [rev_to_bytes(*r) for _, r in pairs]
        raws = self._key_cf.get(rbs)  # one multi-get instead of a lookup per key
        overlay = self._overlay
        if overlay or None in raws:
            raws = [overlay.get(rb) or raw for rb, raw in zip(rbs, raws, strict=True)]
            if None in raws:
                raise errors.ErrCorrupt()
        return RawRangeResult(raws, total, cur)

    def _changed_since(self, rev: int) -> set[bytes] | None:
        """Every key written after ``rev`` (disk and the unflushed overlay), or None if
        there are more than ``max_changes_scan`` such writes (then the index asks every
        key's history instead)."""
        out: set[bytes] = set()
        n, cap = 0, self.max_changes_scan
        start = main_rev_prefix(rev + 1)
        for rb, raw in self._overlay.items():
            if rb >= start:
                out.add(KeyValue.FromString(raw).key)
                n += 1
        for _, raw in self.backend.scan("key", start):
            n += 1
            if n > cap:
                return None
            out.add(KeyValue.FromString(raw).key)
        return out if n <= cap else None

    def kv_at(self, key: bytes, main: int) -> KeyValue | None:
        """The key's value as of revision ``main`` (None if absent or compacted away)."""
        ki = self.index.get(key)
        if ki is None:
            return None
        got = ki.get(main)
        if got is None:
            return None
        try:
            return self._value(got[0])
        except errors.ErrCorrupt:
            return None

    def events_since(self, start: int, end: int) -> Iterator[tuple[int, Event]]:
        """Every change with start <= main revision <= end, in revision order."""
        hi = main_rev_prefix(end + 1)
        for rk, raw in self.backend.scan("key", main_rev_prefix(start), hi):
            kv = KeyValue.FromString(raw)
            main = bytes_to_rev(rk)[0]
            if is_tombstone(rk):
                kv.mod_revision = main
                yield main, Event(type=Event.DELETE, kv=kv)
            else:
                yield main, Event(type=Event.PUT, kv=kv)

    # ---- writes ---------------------------------------------------------------------
    def write(self, batch: WriteBatch) -> WriteTxn:
        return WriteTxn(self, batch)

    def flushed(self) -> None:
        """The caller wrote the batch: overlay values are now readable from disk."""
        self._overlay.clear()

    def compact(self, rev: int, batch: WriteBatch) -> None:
        """Forget history before ``rev``: the index now, the revisions on disk later.

        Reads below ``rev`` fail from now on; the marker goes into the apply's batch, so
        a crash either replays this compaction from the log or resumes its deletion.
        """
        if rev <= self.compact_rev:
            raise errors.ErrCompacted()
        if rev > self.current_rev:
            raise errors.ErrFutureRev()
        keep = self.index.compact(rev)
        self.compact_rev = rev
        batch.put(META_SCHEDULED, _i64(rev), self._meta_handle)
        # From the very first revision, as etcd does: a revision kept by an earlier
        # compaction (a key's value back then) may be superseded by now. It starts once
        # this batch is written (the loop runs between applies), so the overlay is empty.
        self.compactions.schedule(rev, keep)

    def hash_kv(self, rev: int) -> tuple[int, int, int]:
        """etcd's HashKV: CRC-32C over the ``key`` family up to ``rev``.

        Revisions older than the compaction point count only if they are what a key held
        at ``rev`` (etcd's ``kvindex.Keep(rev)``), so members that have or have not yet
        physically removed compacted revisions agree. Returns (hash, compact, hash rev).
        """
        cur = self.current_rev
        if 0 < rev < self.compact_rev:  # etcd 3.5+: the compaction revision itself hashes
            raise errors.ErrCompacted()
        if rev > cur:
            raise errors.ErrFutureRev()
        if rev <= 0:
            rev = cur
        keep: set[Revision] | None = self.index.keep(rev)
        if not keep:
            # etcd then hashes every revision below the compaction point still on disk
            # (None: no filter). While a deletion is pending, that is what it will leave:
            # the last compaction's keep set. Hash as if it were done, so the hash does not
            # depend on how far the deletion has got.
            keep = self.compactions.pending_keep()
        lower = self.compact_rev + 1
        h = crc32c(b"key")
        for rk, raw in self.backend.scan("key", b"", main_rev_prefix(rev + 1)):
            r = bytes_to_rev(rk)
            if r[0] < lower and keep is not None and r not in keep:
                continue
            h = crc32c(rk, h)
            h = crc32c(raw, h)
        return h, self.compact_rev, rev


class WriteTxn:
    """One write transaction: all its changes share main revision current_rev + 1."""

    __slots__ = ("_batch", "begin_rev", "changes", "prev_revs", "s")

    def __init__(self, store: KVStore, batch: WriteBatch) -> None:
        self.s = store
        self._batch = batch
        self.begin_rev = store.current_rev
        self.changes: list[KeyValue] = []
        # prev_revs[i] is the revision the i-th change replaced (for watchers' prev_kv)
        self.prev_revs: list[Revision | None] = []

    @property
    def read_rev(self) -> int:
        return self.begin_rev + 1 if self.changes else self.begin_rev

    def range(self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0,
              count_only: bool = False) -> RangeResult:
        return self.s.range(key, end, rev, limit, count_only, cur_rev=self.read_rev)

    def range_raw(self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0,
                  count_only: bool = False) -> RawRangeResult:
        return self.s.range_raw(key, end, rev, limit, count_only, cur_rev=self.read_rev)

    def put(self, key: bytes, value: bytes, lease: int) -> int:
        s = self.s
        s.puts += 1
        s.put_bytes += len(key) + len(value)
        rev = self.begin_rev + 1
        ki = s.index.get(key)
        create, ver, old_lease, prev = rev, 1, 0, None
        if ki is not None:
            got = ki.get(rev)
            if got is not None:
                prev = got[0]
                create, ver = got[1][0], got[2] + 1
                known = s.leases.lease_of(key)
                old_lease = s._value(prev).lease if known is None else known
        idx_rev = (rev, len(self.changes))
        kv = KeyValue(key=key, value=value, create_revision=create, mod_revision=rev,
                      version=ver, lease=lease)
        rb = rev_to_bytes(*idx_rev)
        raw = kv.SerializeToString()
        self._batch.put(rb, raw, s._key_handle)
        s._overlay[rb] = raw
        s.index.put(ki or s.index.get_or_create(key), idx_rev)
        self.changes.append(kv)
        self.prev_revs.append(prev)
        if old_lease and old_lease != lease:
            s.leases.detach(old_lease, key)
        if lease and lease != old_lease:
            s.leases.attach(lease, key)
        return rev

    def delete_range(self, key: bytes, end: bytes | None) -> tuple[int, int]:
        """Returns (deleted count, revision) as etcd's DeleteRange does."""
        self.s.deletes += 1
        pairs, _ = self.s.index.revisions(key, end, self.read_rev)
        for ki, prev in pairs:
            self._delete(ki.key, prev)
        if pairs or self.changes:
            return len(pairs), self.begin_rev + 1
        return 0, self.begin_rev

    def _delete(self, key: bytes, prev: Revision) -> None:
        s = self.s
        idx_rev = (self.begin_rev + 1, len(self.changes))
        rb = rev_to_bytes(*idx_rev, tombstone=True)
        raw = KeyValue(key=key).SerializeToString()
        self._batch.put(rb, raw, s._key_handle)
        s._overlay[rb] = raw
        known = s.leases.lease_of(key)
        old_lease = s._value(prev).lease if known is None else known
        s.index.tombstone(s.index.get_or_create(key), idx_rev)
        self.changes.append(KeyValue(key=key, mod_revision=self.begin_rev + 1))
        self.prev_revs.append(prev)
        if old_lease:
            s.leases.detach(old_lease, key)

    def end(self) -> list[Event]:
        """Finish: advance the store's revision if anything changed; return watch events."""
        if not self.changes:
            return []
        s = self.s
        s.current_rev = self.begin_rev + 1
        self._batch.put(META_CURRENT_REV, _i64(s.current_rev), s._meta_handle)
        return [Event(type=Event.PUT if kv.create_revision else Event.DELETE, kv=kv)
                for kv in self.changes]


def _crc32c_table() -> list[int]:
    poly = 0x82F63B78
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_T = _crc32c_table()


def _crc32c_py(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    t = _T
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # a C implementation when available (the google-crc32c wheel)
    from google_crc32c import extend as _crc_extend  # type: ignore[import-not-found]

    def crc32c(data: bytes, crc: int = 0) -> int:
        return int(_crc_extend(crc, data))
except ImportError:  # pragma: no cover - depends on the environment
    crc32c = _crc32c_py

