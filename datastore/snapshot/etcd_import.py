"""An etcd ``db`` file (3.4, 3.5, 3.6, or the datastore's own export) into a new state database.

The key and lease buckets go in unchanged (the datastore stores them in etcd's encoding);
the compaction markers, auth and alarms are translated to the datastore's meta keys; the
current revision is what etcd derives on start: the newest revision in the key bucket, or
the compaction point if that is newer. Membership, consistent index and term are not
carried over: the restored member starts a new cluster, as ``etcdutl snapshot restore``'s
does. Every entry is checked as it is read, so a damaged file is refused with the bucket
and key that are wrong, never loaded half-way into a member that then serves it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from datastore.api.authpb import auth_pb2 as authpb
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.internalpb.internal_pb2 import LeaseRecord
from datastore.api.mvccpb.kv_pb2 import KeyValue
from datastore.auth.store import K_ENABLED, K_REVISION, P_ROLE, P_USER
from datastore.bbolt import BoltError, BoltReader
from datastore.bbolt.layout import BUCKET_LEAF_FLAG
from datastore.mvcc.compaction import META_FINISHED, META_SCHEDULED, i64
from datastore.mvcc.kvstore import META_CURRENT_REV
from datastore.snapshot import etcd_layout as L
from datastore.storage.backend import Backend

log = logging.getLogger("datastore.snapshot")

M = TypeVar("M", bound=Message)
BATCH_BYTES = 4 << 20  # one WriteBatch per this much data: memory stays flat


class SnapshotFormatError(ValueError):
    """The file is a bbolt database but not etcd's, or an entry in it is damaged."""


@dataclass
class ImportStats:
    revisions: int = 0
    leases: int = 0
    users: int = 0
    roles: int = 0
    current_revision: int = 1
    compact_revision: int = -1


class _Batcher:
    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.wb = backend.batch()
        self.bytes = 0

    def put(self, cf: str, k: bytes, v: bytes) -> None:
        self.wb.put(k, v, self.b.handle(cf))
        self.bytes += len(k) + len(v)
        if self.bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        self.b.write(self.wb, sync=False)
        self.wb = self.b.batch()
        self.bytes = 0


def _parse(msg: type[M], raw: bytes, where: str) -> M:
    try:
        return msg.FromString(raw)
    except DecodeError as e:
        raise SnapshotFormatError(f"{where}: not a valid {msg.__name__} ({e})") from None


PROGRESS_EVERY = 1024  # key revisions between calls of ``on_progress``


def import_etcd_db(reader: BoltReader, backend: Backend,
                   on_progress: Callable[[ImportStats], None] | None = None,
                   bump_revision: int = 0) -> ImportStats:
    """Copy what an etcd member serves from ``reader`` into the empty ``backend``;
    ``on_progress(stats)`` is called every ``PROGRESS_EVERY`` key revisions (the key
    bucket is nearly all of a snapshot) and once at the end.

    ``bump_revision`` > 0 is etcdutl's ``--bump-revision N --mark-compacted``: the latest
    revision in the key bucket plus N becomes the current revision and the scheduled
    compaction point, so every client's old revision reads and watches as compacted
    (informers relist) instead of seeing the revision go back."""
    buckets = dict(reader.buckets())
    missing = [b.decode() for b in (L.KEY, L.META) if b not in buckets]
    if missing:
        raise SnapshotFormatError(
            f"not an etcd snapshot: the bbolt database has no {' or '.join(missing)} bucket "
            f"(its buckets: {', '.join(b.decode(errors='replace') for b in buckets) or 'none'})")
    out = _Batcher(backend)
    st = ImportStats()

    last_main = 0
    for k, v, _ in _plain(reader, buckets[L.KEY], "key"):
        if not ((len(k) == L.REV_LEN or (len(k) == L.TOMBSTONE_LEN and k[17:] == b"t"))
                and k[8:9] == b"_"):
            raise SnapshotFormatError(f"bucket key: {k.hex()} is not an etcd revision")
        main = int.from_bytes(k[:8], "big", signed=True)
        last_main = max(last_main, main)
        if not v:
            continue  # etcdutl's --bump-revision marker: a revision without a change
        _parse(KeyValue, v, f"bucket key, revision {main}")
        out.put("key", k, v)
        st.revisions += 1
        if on_progress is not None and st.revisions % PROGRESS_EVERY == 0:
            on_progress(st)

    meta = dict((k, v) for k, v, _ in _plain(reader, buckets[L.META], "meta"))
    scheduled = finished = -1
    try:
        if L.SCHEDULED_COMPACT in meta:
            scheduled = L.compact_rev_from(meta[L.SCHEDULED_COMPACT])
        if L.FINISHED_COMPACT in meta:
            finished = L.compact_rev_from(meta[L.FINISHED_COMPACT])
    except ValueError as e:
        raise SnapshotFormatError(f"bucket meta: {e}") from None
    if bump_revision > 0:
        log.info("bumping latest revision", extra={
            "latest_revision": last_main, "bump_amount": bump_revision,
            "new_latest_revision": last_main + bump_revision})
        last_main += bump_revision
        scheduled = last_main  # compacted from the start (resumed as the member loads)
        log.info("marking revision compacted", extra={"revision": last_main})
    if scheduled >= 0:
        out.put("meta", META_SCHEDULED, i64(scheduled))
    if finished >= 0:
        out.put("meta", META_FINISHED, i64(finished))
    st.compact_revision = max(scheduled, finished)
    st.current_revision = max(1, last_main, st.compact_revision)
    out.put("meta", META_CURRENT_REV, i64(st.current_revision))

    if L.LEASE in buckets:
        for k, v, _ in _plain(reader, buckets[L.LEASE], "lease"):
            rec = _parse(LeaseRecord, v, f"bucket lease, key {k.hex()}")
            if len(k) != 8 or int.from_bytes(k, "big", signed=True) != rec.ID:
                raise SnapshotFormatError(f"bucket lease: key {k.hex()} does not name lease "
                                          f"{rec.ID:x}")
            out.put("lease", k, v)
            st.leases += 1

    if L.AUTH in buckets:
        auth = dict((k, v) for k, v, _ in _plain(reader, buckets[L.AUTH], "auth"))
        if L.AUTH_ENABLED in auth:
            out.put("meta", K_ENABLED, b"\x01" if auth[L.AUTH_ENABLED] == b"\x01" else b"\x00")
        if L.AUTH_REVISION in auth:
            raw = auth[L.AUTH_REVISION]
            if len(raw) != 8:
                raise SnapshotFormatError(f"bucket auth: authRevision has {len(raw)} bytes, not 8")
            out.put("meta", K_REVISION, raw)
    for bucket, prefix, msg in ((L.AUTH_USERS, P_USER, authpb.User),
                                (L.AUTH_ROLES, P_ROLE, authpb.Role)):
        if bucket not in buckets:
            continue
        for k, v, _ in _plain(reader, buckets[bucket], bucket.decode()):
            rec = _parse(msg, v, f"bucket {bucket.decode()}, key {k!r}")
            if rec.name != k:
                raise SnapshotFormatError(f"bucket {bucket.decode()}: key {k!r} holds "
                                          f"{rec.name!r}")
            out.put("meta", prefix + k, v)
            if bucket == L.AUTH_USERS:
                st.users += 1
            else:
                st.roles += 1

    if L.ALARM in buckets:
        for k, _, _ in _plain(reader, buckets[L.ALARM], "alarm"):
            a = _parse(rpc.AlarmMember, k, "bucket alarm")
            out.put("meta", b"alarm/" + a.memberID.to_bytes(8, "big")
                    + bytes([a.alarm & 0xFF]), b"")

    ignored = sorted(set(buckets) - set(L.ALL_BUCKETS))
    if ignored:
        log.info("snapshot buckets the datastore does not use were skipped",
                 extra={"buckets": [b.decode(errors="replace") for b in ignored]})
    out.flush()
    backend.sync()
    if on_progress is not None:
        on_progress(st)
    return st


def _plain(reader: BoltReader, value: bytes, name: str) -> Iterator[tuple[bytes, bytes, int]]:
    """A bucket's entries; etcd never nests buckets, so a nested one means a foreign file."""
    for k, v, flags in reader.items(value, name):
        if flags & BUCKET_LEAF_FLAG:
            raise SnapshotFormatError(f"bucket {name}: key {k!r} is a nested bucket, which etcd "
                                      "never writes")
        yield k, v, flags


__all__ = ["BoltError", "ImportStats", "SnapshotFormatError", "import_etcd_db"]
