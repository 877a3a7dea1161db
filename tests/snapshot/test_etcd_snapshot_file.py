"""The state <-> etcd db translation in process (real RocksDB), and the restore's reader
fuzzed with damaged snapshots: every outcome is a clean restore or a clear error, never a
crash, a hang, or a data dir left half-written."""

from __future__ import annotations

import functools
import hashlib
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datastore.api.authpb import auth_pb2 as authpb
from datastore.api.internalpb.internal_pb2 import LeaseRecord, MemberRecord
from datastore.api.mvccpb.kv_pb2 import KeyValue
from datastore.auth.store import K_ENABLED, K_REVISION, P_ROLE, P_USER
from datastore.bbolt import BoltReader
from datastore.mvcc.compaction import META_FINISHED, META_SCHEDULED, i64
from datastore.mvcc.kvstore import META_CURRENT_REV
from datastore.mvcc.revision import rev_to_bytes
from datastore.server.applier import META_APPLIED, META_APPLIED_TERM
from datastore.server.config import Config
from datastore.server.restore import restore_snapshot
from datastore.snapshot import etcd_layout as L
from datastore.snapshot.etcd_export import export_etcd_db
from datastore.snapshot.etcd_import import import_etcd_db
from datastore.storage.backend import Backend


def fill(b: Backend) -> None:
    wb = b.batch()
    h = b.handle
    rev = 1
    for i in range(300):
        rev += 1
        key = b"key/%03d" % (i % 120)
        kv = KeyValue(key=key, value=b"v%d" % i, create_revision=rev, mod_revision=rev, version=1,
                      lease=7 if i % 50 == 0 else 0)
        wb.put(rev_to_bytes(rev), kv.SerializeToString(), h("key"))
    rev += 1
    wb.put(rev_to_bytes(rev, 0, tombstone=True), KeyValue(key=b"key/000").SerializeToString(),
           h("key"))
    wb.put(META_CURRENT_REV, i64(rev), h("meta"))
    wb.put(META_SCHEDULED, i64(100), h("meta"))
    wb.put(META_FINISHED, i64(90), h("meta"))
    wb.put(META_APPLIED, (500).to_bytes(8, "big"), h("meta"))
    wb.put(META_APPLIED_TERM, (3).to_bytes(8, "big"), h("meta"))
    wb.put((7).to_bytes(8, "big"), LeaseRecord(ID=7, TTL=60).SerializeToString(), h("lease"))
    wb.put(K_ENABLED, b"\x01", h("meta"))
    wb.put(K_REVISION, (12).to_bytes(8, "big"), h("meta"))
    wb.put(P_USER + b"root", authpb.User(name=b"root", password=b"$2a$10$x", roles=["root"])
           .SerializeToString(), h("meta"))
    wb.put(P_ROLE + b"r", authpb.Role(name=b"r", keyPermission=[authpb.Permission(
        permType=authpb.Permission.READ, key=b"a", range_end=b"b")]).SerializeToString(), h("meta"))
    wb.put(b"alarm/" + (5).to_bytes(8, "big") + b"\x01", b"", h("meta"))
    wb.put((5).to_bytes(8, "big"), MemberRecord(ID=5, name="m", peer_urls=["http://p"])
           .SerializeToString(), h("members"))
    b.write(wb, sync=True)


def cf(b: Backend, name: str) -> dict[bytes, bytes]:
    return dict(b.scan(name, b""))


def test_export_then_import_keeps_the_state(tmp_path: Path) -> None:
    src = Backend(tmp_path / "src")
    fill(src)
    db = tmp_path / "x.db"
    with db.open("wb") as f:
        export_etcd_db(src, f)
    with BoltReader(db) as r:
        meta = dict((k, v) for k, v, _ in r.items(r.bucket(L.META) or b"", "meta"))
        members = [v for _, v, _ in r.items(r.bucket(L.MEMBERS) or b"", "members")]
    assert meta[L.CONSISTENT_INDEX] == (500).to_bytes(8, "big")
    assert meta[L.TERM] == (3).to_bytes(8, "big")
    assert meta[L.SCHEDULED_COMPACT] == rev_to_bytes(100)
    assert meta[L.CONF_STATE] == b'{"voters":[5],"auto_leave":false}'
    assert members == [b'{"id":5,"peerURLs":["http://p"],"name":"m"}']
    dst = Backend(tmp_path / "dst")
    st = import_etcd_db(BoltReader(db), dst)
    assert (st.current_revision, st.compact_revision, st.leases, st.users, st.roles) == \
        (302, 100, 1, 1, 1)
    assert cf(dst, "key") == cf(src, "key")
    assert cf(dst, "lease") == cf(src, "lease")
    want_meta = {k: v for k, v in cf(src, "meta").items() if k not in (META_APPLIED,
                                                                      META_APPLIED_TERM)}
    assert cf(dst, "meta") == want_meta
    assert cf(dst, "members") == {}  # a restore starts a new cluster


@functools.cache
def snapshot() -> bytes:
    """A small store exported, hash appended (made once; hypothesis must not print it)."""
    with tempfile.TemporaryDirectory() as tmp:
        b = Backend(Path(tmp) / "s")
        fill(b)
        db = Path(tmp) / "s.db"
        with db.open("wb") as f:
            export_etcd_db(b, f)
        b.close()
        raw = db.read_bytes()
    return raw + hashlib.sha256(raw).digest()


def try_restore(data: bytes, tmp: Path, skip_hash_check: bool) -> str:
    tmp = Path(tempfile.mkdtemp(dir=tmp))
    snap = tmp / "in.snapshot"
    snap.write_bytes(data)
    out = tmp / "restored"
    try:
        restore_snapshot(str(snap), Config(name="n", data_dir=str(out)),
                         skip_hash_check=skip_hash_check)
    except ValueError as e:  # every refusal (BoltError, format, hash) is a ValueError
        assert str(e)
        assert not out.exists(), "a failed restore left a data dir behind"
        return "refused"
    assert (out / "state").is_dir()
    return "restored"


def test_good_snapshot_restores(tmp_path: Path) -> None:
    assert try_restore(snapshot(), tmp_path, skip_hash_check=False) == "restored"


mutation = st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255))


@settings(max_examples=100, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(muts=st.lists(mutation, min_size=1, max_size=6), cut=st.one_of(st.none(), st.integers(0)),
       data_pages_only=st.booleans())
def test_damaged_snapshots_are_refused_cleanly(muts: list[tuple[int, int]], cut: int | None,
                                               data_pages_only: bool) -> None:
    body = bytearray(snapshot()[:-32])
    lo = 3 * 4096 if data_pages_only else 0  # mostly past the meta pages, to reach the trees
    for at, val in muts:
        body[lo + at % (len(body) - lo)] = val
    if cut is not None:
        del body[cut % len(body):]
    with tempfile.TemporaryDirectory() as tmp:
        # the hash is right, so only the reader stands between the damage and the member
        try_restore(bytes(body) + hashlib.sha256(body).digest(), Path(tmp), skip_hash_check=False)
        try_restore(bytes(body), Path(tmp), skip_hash_check=True)


def test_hash_and_emptiness_checks(tmp_path: Path) -> None:
    snapshot_bytes = snapshot()
    bad = bytearray(snapshot_bytes)
    bad[5000] ^= 0xFF
    snap = tmp_path / "bad.snapshot"
    snap.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"^expected sha256 \[\d+( \d+){31}\], got \["):
        restore_snapshot(str(snap), Config(name="n", data_dir=str(tmp_path / "a")))
    assert not (tmp_path / "a").exists()
    snap.write_bytes(snapshot_bytes[:-32])
    with pytest.raises(ValueError, match="snapshot missing hash but --skip-hash-check=false"):
        restore_snapshot(str(snap), Config(name="n", data_dir=str(tmp_path / "a")))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    snap.write_bytes(snapshot_bytes)
    with pytest.raises(ValueError, match="not empty"):
        restore_snapshot(str(snap), Config(name="n", data_dir=str(full)))
    assert [p.name for p in full.iterdir()] == ["keep"]


def test_older_tar_snapshots_still_restore(tmp_path: Path) -> None:
    """The datastore's snapshots before they were etcd's: a tar of the state, then its hash."""
    src = Backend(tmp_path / "src")
    fill(src)
    (tmp_path / "cp").mkdir()
    src.checkpoint(tmp_path / "cp" / "state")
    tar_path = tmp_path / "old.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tmp_path / "cp" / "state", arcname="state")
    body = tar_path.read_bytes()
    snap = tmp_path / "old.snapshot"
    snap.write_bytes(body + hashlib.sha256(body).digest())
    restore_snapshot(str(snap), Config(name="n", data_dir=str(tmp_path / "out")))
    got = Backend(tmp_path / "out" / "state")
    assert cf(got, "key") == cf(src, "key")
    assert cf(got, "members") == {}
    assert META_APPLIED not in cf(got, "meta")
