"""``--wal-dir``: the raft log in a directory of its own, as etcd's flag puts its WAL.

A member started with it keeps its log there (nothing under ``<data dir>/wal``) and finds
it again after a restart. Started without it, or with another one while its data dir
holds its log, it refuses with one line that says which ``--wal-dir`` to give, before
anything is written. ``datastore snapshot restore --wal-dir`` refuses an existing
directory in etcdutl 3.6's words and makes the member's log start there.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from e2e_util import target_is_etcd

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.testing.procs import ServerProc, datastore_proc, etcdctl
from e2e.snapshot_util import Etcd, datastore_restore_argv, restore_argv, run

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="the datastore's own data dir")


def _values(p: ServerProc) -> dict[bytes, bytes]:
    with p.channel() as ch:
        from datastore.api.etcdserverpb import rpc_pb2_grpc

        r = rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"k/", range_end=b"k0"), timeout=10)
    return {kv.key: kv.value for kv in r.kvs}


def _refused(p: ServerProc) -> str:
    """Start ``p``, which must exit at once: its one error line."""
    r = subprocess.run(p.argv, env=p.env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert lines, r.stderr
    return lines[-1]


def _with_wal_dir(p: ServerProc, wal: Path | None) -> ServerProc:
    p.argv = [a for a in p.argv if not a.startswith("--wal-dir=")]
    if wal is not None:
        p.argv.append(f"--wal-dir={wal}")
    return p


def test_member_keeps_its_raft_log_in_wal_dir(tmp_path: Path) -> None:
    wal = tmp_path / "fast-disk" / "wal"
    p = _with_wal_dir(datastore_proc(tmp_path, "m0"), wal)
    p.start()
    try:
        for i in range(20):
            etcdctl(p.endpoint, "put", f"k/{i:02d}", f"v{i}")
        assert p.stop() == 0
        assert (wal / "CURRENT").exists() and not (p.data_dir / "wal").exists()
        p.start()
        assert len(_values(p)) == 20
        assert p.stop() == 0

        # without it, the member would start with an empty log beside its state
        alone = _refused(_with_wal_dir(p, None))
        assert f"no raft log at {p.data_dir / 'wal'}" in alone, alone
        assert "start the member with the --wal-dir its log is in" in alone, alone
        assert not (p.data_dir / "wal").exists(), "the refused start made a log"
        _with_wal_dir(p, wal).start()
        assert len(_values(p)) == 20
    finally:
        p.stop()


def test_data_dir_with_its_own_log_refuses_another_wal_dir(tmp_path: Path) -> None:
    p = datastore_proc(tmp_path, "m0")
    p.start()
    try:
        etcdctl(p.endpoint, "put", "k/1", "v")
    finally:
        assert p.stop() == 0
    other = tmp_path / "elsewhere"
    line = _refused(_with_wal_dir(p, other))
    assert f"{p.data_dir / 'wal'} holds this member's raft log, but --wal-dir is {other}" in line
    assert not other.exists(), "the refused start made a log"
    _with_wal_dir(p, None).start()
    try:
        assert _values(p) == {b"k/1": b"v"}
    finally:
        p.stop()


def test_restore_with_wal_dir_as_etcdutl(tmp_path: Path) -> None:
    src = datastore_proc(tmp_path / "src", "m0")
    src.start()
    try:
        for i in range(5):
            etcdctl(src.endpoint, "put", f"k/{i}", f"v{i}")
        snap = tmp_path / "snap.db"
        etcdctl(src.endpoint, "snapshot", "save", str(snap))
    finally:
        src.stop()
    target = datastore_proc(tmp_path / "ds", name="restored")
    wal = tmp_path / "restored-wal"
    run(datastore_restore_argv(snap, target, f"--wal-dir={wal}"))
    assert wal.is_dir()

    # an existing --wal-dir is refused, in etcdutl's words, before anything is written
    again = datastore_proc(tmp_path / "again", name="restored")
    ours = run(datastore_restore_argv(snap, again, f"--wal-dir={wal}"), check=False)
    util = run([*restore_argv(Etcd.get("3.6").restore_tool, snap, again), f"--wal-dir={wal}"],
               check=False)
    assert ours.returncode == 2 and f'wal-dir "{wal}" exists' in ours.stderr, ours.stderr
    assert f'wal-dir "{wal}" exists' in util.stderr, util.stderr
    assert not again.data_dir.exists()

    _with_wal_dir(target, wal).start()
    try:
        assert _values(target) == {f"k/{i}".encode(): f"v{i}".encode() for i in range(5)}
        assert (wal / "CURRENT").exists() and not (target.data_dir / "wal").exists()
    finally:
        target.stop()
