"""Snapshots between the datastore and real etcd, both ways, with real processes and tools.

Out: the datastore's snapshot (saved by the real etcdctl) passes ``bbolt check`` and both
releases' ``snapshot status``, is restored by etcdctl 3.4 / etcdutl 3.6, and the real etcd
started on it serves what the datastore served: every key with its revisions, version and
lease, the current and compacted revision, HashKV, leases with their keys, users, roles,
permissions and auth. In: the same workload on real etcd 3.4 / 3.6, saved by its own
etcdctl and restored by ``datastore snapshot restore``, serves the same from the datastore.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import pytest

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc
from e2e.e2e_util import target_is_etcd
from e2e.snapshot_util import (
    Conn,
    Etcd,
    bbolt_bin,
    datastore_restore_argv,
    differences,
    dump,
    populate,
    restore_argv,
    run,
    save_snapshot,
)

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="the datastore's own snapshots")

VERSIONS = ["3.4", "3.6"]


@pytest.fixture
def procs() -> list[ServerProc]:
    started: list[ServerProc] = []
    yield started
    for p in started:
        p.stop()


def start(procs: list[ServerProc], p: ServerProc) -> ServerProc:
    procs.append(p)
    return p.start()


def start_with_auth(procs: list[ServerProc], p: ServerProc, timeout: float = 60) -> ServerProc:
    """Start a member restored with auth on: etcd 3.6 answers even Status only to a user,
    so it is ready once root can log in."""
    procs.append(p)
    p.launch()
    deadline = time.monotonic() + timeout
    while True:
        c = Conn(p)
        try:
            c.login()
            return p
        except grpc.RpcError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{p.name}: root cannot log in after {timeout}s ({e}):\n"
                                     f"{p.log_tail()}") from None
            if p.popen is not None and p.popen.poll() is not None:
                raise AssertionError(f"{p.name} exited:\n{p.log_tail()}") from None
        finally:
            c.close()
        time.sleep(0.05)  # poll interval of the condition above


def served(p: ServerProc) -> dict:
    c = Conn(p)
    try:
        c.login()
        return dump(c)
    finally:
        c.close()


def populated(p: ServerProc) -> dict:
    c = Conn(p)
    try:
        populate(c)
        return dump(c)
    finally:
        c.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_datastore_snapshot_restores_into_etcd(version: str, procs: list[ServerProc],
                                                tmp_path: Path) -> None:
    etcd = Etcd.get(version)
    ds = start(procs, datastore_proc(tmp_path / "ds", name="node0"))
    want = populated(ds)
    snap = tmp_path / "ds.snapshot"
    save_snapshot(etcd.ctl, ds, snap)

    # the file: a sound bbolt database, and both releases' status reads it as the datastore's
    db = tmp_path / "ds.db"
    with snap.open("rb") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.truncate(snap.stat().st_size - 32)  # the trailing SHA-256 is not bbolt's
    assert run([bbolt_bin(), "check", str(db)]).stdout.strip() == "OK"
    statuses = [json.loads(run([*Etcd.get(v).restore_tool, "snapshot", "status", str(snap),
                                "-w", "json"]).stdout) for v in VERSIONS]
    assert [s["revision"] for s in statuses] == [want["revision"]] * 2
    assert statuses[0]["hash"] == statuses[1]["hash"]
    assert statuses[1]["totalKey"] == len(want["keys"])  # 3.6 counts live keys

    target = etcd_proc(tmp_path / "etcd", name="restored")
    target.argv[0] = etcd.server
    run(restore_argv(etcd.restore_tool, snap, target))
    start_with_auth(procs, target)
    got = served(target)
    assert differences(want, got) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_etcd_snapshot_restores_into_datastore(version: str, procs: list[ServerProc],
                                                tmp_path: Path) -> None:
    etcd = Etcd.get(version)
    src = etcd_proc(tmp_path / "etcd", name="node0")
    src.argv[0] = etcd.server
    start(procs, src)
    want = populated(src)
    snap = tmp_path / "etcd.snapshot"
    save_snapshot(etcd.ctl, src, snap)

    target = datastore_proc(tmp_path / "ds", name="restored")
    run(datastore_restore_argv(snap, target))
    start_with_auth(procs, target)
    got = served(target)
    assert differences(want, got) == []
    # and it goes on from there: the next write takes the next revision
    c = Conn(target)
    try:
        c.login()
        r = c.call(c.kv, "Put", pb.PutRequest(key=b"next", value=b"1"))
        assert r.header.revision == want["revision"] + 1
    finally:
        c.close()
