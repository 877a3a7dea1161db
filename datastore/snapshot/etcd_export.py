"""The datastore's state as an etcd ``db`` file (what Maintenance.Snapshot streams).

Reads a checkpoint of the state database one column family at a time, in key order, and
feeds each bucket to the bbolt writer as it goes: memory does not grow with the store. The
meta bucket says what etcd 3.5 writes (consistent index, term, conf state, the compaction
markers); the cluster version is the 3.5 series the datastore reports. etcd 3.6 adds its
``storageVersion`` when it first starts on such a file, as it does for a 3.5 member's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from rocksdict import ReadOptions

from datastore.api.authpb import auth_pb2 as authpb
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.internalpb.internal_pb2 import MemberRecord
from datastore.auth.store import K_ENABLED, K_REVISION, P_ROLE, P_USER
from datastore.bbolt import BoltWriter
from datastore.mvcc.compaction import META_FINISHED, META_LEGACY, META_SCHEDULED, from_i64
from datastore.server.applier import META_APPLIED, META_APPLIED_TERM
from datastore.server.config import CLUSTER_VERSION
from datastore.server.snapshot_image import close_checkpoint, conf_state_of, open_checkpoint
from datastore.snapshot import etcd_layout as L

ALARM_PREFIX = b"alarm/"


class StateReader(Protocol):
    """What the exporter needs of the state database (a Backend or an open checkpoint)."""

    def scan(self, cf: str, start: bytes, end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]: ...
    def get(self, cf: str, key: bytes) -> bytes | None: ...


class CheckpointReader:
    """A checkpoint directory read once, front to back, without filling a block cache."""

    def __init__(self, path: Path) -> None:
        self.db = open_checkpoint(path)

    def scan(self, cf: str, start: bytes, end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        ro = ReadOptions()
        ro.fill_cache(False)
        ro.set_readahead_size(2 << 20)
        it = self.db.get_column_family(cf).iter(ro)
        it.seek(start)
        while it.valid():
            k = it.key()
            if end is not None and k >= end:
                break
            yield k, it.value()
            it.next()
        it.status()  # a read error ends iteration too: never export a shorter store
        del it

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self.db.get_column_family(cf).get(key)

    def close(self) -> None:
        close_checkpoint(self.db)


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def export_etcd_db(state: StateReader, f: BinaryIO) -> int:
    """Write the state as an etcd bbolt database to ``f``; returns its size in bytes."""
    w = BoltWriter(f)
    buckets: dict[bytes, bytes] = {}

    kb = w.bucket()
    for k, v in state.scan("key", b""):
        kb.put(k, v)
    buckets[L.KEY] = kb.finish()

    lb = w.bucket()
    for k, v in state.scan("lease", b""):
        lb.put(k, v)  # same id encoding and the same message as leasepb.Lease
    buckets[L.LEASE] = lb.finish()

    members = [MemberRecord.FromString(v) for _, v in state.scan("members", b"")]
    mb = w.bucket()
    for key, m in sorted((L.member_key(m.ID), m) for m in members):
        mb.put(key, L.member_json(m))
    buckets[L.MEMBERS] = mb.finish()
    buckets[L.MEMBERS_REMOVED] = w.bucket().finish()

    cb = w.bucket()
    cb.put(L.CLUSTER_VERSION, CLUSTER_VERSION.encode())
    buckets[L.CLUSTER] = cb.finish()

    alarms = []
    for k, _ in state.scan("meta", ALARM_PREFIX, _prefix_end(ALARM_PREFIX)):
        member, kind = int.from_bytes(k[6:14], "big"), k[14]
        alarms.append(rpc.AlarmMember(memberID=member, alarm=kind).SerializeToString())
    ab = w.bucket()
    for a in sorted(alarms):
        ab.put(a, b"")
    buckets[L.ALARM] = ab.finish()

    auth = w.bucket()
    auth.put(L.AUTH_ENABLED, b"\x01" if state.get("meta", K_ENABLED) == b"\x01" else b"\x00")
    raw_rev = state.get("meta", K_REVISION)
    auth.put(L.AUTH_REVISION, L.u64(int.from_bytes(raw_rev, "big") if raw_rev else 1))
    buckets[L.AUTH] = auth.finish()
    for bucket, prefix, msg in ((L.AUTH_USERS, P_USER, authpb.User),
                                (L.AUTH_ROLES, P_ROLE, authpb.Role)):
        b = w.bucket()
        for k, v in state.scan("meta", prefix, _prefix_end(prefix)):
            msg.FromString(v)  # the same message etcd stores: refuse to export a damaged one
            b.put(k[len(prefix):], v)
        buckets[bucket] = b.finish()

    buckets[L.META] = _meta_bucket(w, state, members)
    return w.finish(buckets)


def _meta_bucket(w: BoltWriter, state: StateReader, members: list[MemberRecord]) -> bytes:
    get = state.get
    meta: dict[bytes, bytes] = {}
    applied = get("meta", META_APPLIED)
    if applied:
        meta[L.CONSISTENT_INDEX] = L.u64(int.from_bytes(applied, "big"))
        term = get("meta", META_APPLIED_TERM)
        if term and int.from_bytes(term, "big"):
            meta[L.TERM] = L.u64(int.from_bytes(term, "big"))
    cs = conf_state_of(members)
    meta[L.CONF_STATE] = L.conf_state_json(list(cs.voters), list(cs.learners))
    finished = from_i64(get("meta", META_FINISHED), -1)
    if finished < 0:
        finished = from_i64(get("meta", META_LEGACY), -1)
    scheduled = max(from_i64(get("meta", META_SCHEDULED), -1), finished)
    if scheduled >= 0:
        meta[L.SCHEDULED_COMPACT] = L.compact_rev_bytes(scheduled)
    if finished >= 0:
        meta[L.FINISHED_COMPACT] = L.compact_rev_bytes(finished)
    b = w.bucket()
    for k in sorted(meta):
        b.put(k, meta[k])
    return b.finish()


def export_checkpoint(checkpoint: Path, f: BinaryIO) -> int:
    """``export_etcd_db`` of a checkpoint directory (run it in a thread: it reads the disk)."""
    reader = CheckpointReader(checkpoint)
    try:
        return export_etcd_db(reader, f)
    finally:
        reader.close()
