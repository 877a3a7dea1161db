"""A damaged data dir is detected at start-up and the member refuses to serve it.

* raft log (RocksDB ``wal`` db) cut short: the state is ahead of the log, so entries that
  were acknowledged are gone; the member exits (code 3) with a clear message.
* a corrupted record in the raft log: RocksDB's checksum catches it (the wal db uses
  ``tolerate_corrupted_tail_records``, so a bad record is never silently skipped).
* a corrupted state file (SST block): found while loading the state, before serving.
* ``--experimental-initial-corrupt-check``: a member whose data silently differs from its
  peers' (same revision, different HashKV) refuses to start; without the flag it would
  serve the wrong value (shown, so the check is what catches it).
"""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest
from cluster_util import FAST, Cluster, wait_for
from e2e_util import Client
from test_crash import Writers

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.mvccpb import kv_pb2
from datastore.storage.backend import Backend
from datastore.testing.certs import CertAuthority
from datastore.testing.faultfs import FaultDisk, build_shim
from datastore.testing.procs import ClientTLS, ServerProc, datastore_proc, free_port

REFUSED_EXIT = 3


def filled(tmp_path: Path, name: str, n: int = 100) -> ServerProc:
    """A member with ``n`` acknowledged puts, killed with -9 (page cache intact)."""
    proc = datastore_proc(tmp_path, name)
    proc.start()
    w = Writers(proc, name, random.Random(7))
    w.wait_acks(n)
    proc.kill()
    w.join()
    return proc


def refused(proc: ServerProc, *expect: str) -> str:
    with pytest.raises(RuntimeError, match=f"exited with {REFUSED_EXIT}"):
        proc.start()
    log = proc.log_tail(20)
    assert "refusing to start: data dir is corrupt" in log, log
    for e in expect:
        assert e in log, f"{e!r} not in:\n{log}"
    return log


def newest(d: Path, pattern: str) -> Path:
    files = sorted(d.glob(pattern), key=lambda p: (p.stat().st_size > 0, p.name))
    assert files, f"no {pattern} in {d}"
    return files[-1]


def test_truncated_wal_tail_refused(tmp_path: Path) -> None:
    proc = filled(tmp_path, "trunc")
    log_file = newest(proc.data_dir / "wal", "*.log")
    data = log_file.read_bytes()
    log_file.write_bytes(data[:len(data) * 4 // 5])  # lose the last fifth, mid-record
    refused(proc, "but the raft log ends at")


def test_corrupted_wal_record_refused(tmp_path: Path) -> None:
    proc = filled(tmp_path, "flip")
    log_file = newest(proc.data_dir / "wal", "*.log")
    data = bytearray(log_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    log_file.write_bytes(bytes(data))
    refused(proc, "Corruption", "/wal")


def test_corrupted_wal_record_after_power_loss_refused(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The state db is behind the log here (never synced), so only the log can tell.

    RocksDB's default WAL recovery would end the log at the bad record and the member
    would replay a shorter history, serving it without the acknowledged writes after it.
    """
    shim = build_shim(tmp_path_factory.getbasetemp() / "faultfs")
    proc = datastore_proc(tmp_path, "plflip")
    disk = FaultDisk(proc.data_dir, tmp_path / "plflip.durable", shim)
    proc.env.update(disk.env())
    proc.start()
    w = Writers(proc, "plflip", random.Random(8))
    w.wait_acks(100)
    proc.kill()
    w.join()
    disk.pull_plug()
    log_file = newest(proc.data_dir / "wal", "*.log")
    data = bytearray(log_file.read_bytes())
    data[len(data) // 3] ^= 0xFF
    log_file.write_bytes(bytes(data))
    refused(proc, "Corruption", "/wal")


def test_corrupted_state_file_refused(tmp_path: Path) -> None:
    proc = datastore_proc(tmp_path, "sst")
    try:
        proc.start()
        rng = random.Random(11)
        with Client(proc) as c:
            for i in range(200):  # incompressible values: data blocks fill the SST
                c.kv.Put(pb.PutRequest(key=f"k{i:04d}".encode(), value=rng.randbytes(200)),
                         timeout=10)
            c.maint.Defragment(pb.DefragmentRequest(), timeout=30)  # state now in SST files
    finally:
        proc.stop()
    sst = max((proc.data_dir / "state").glob("*.sst"), key=lambda p: p.stat().st_size)
    data = bytearray(sst.read_bytes())
    for off in range(len(data) // 4, len(data) // 2, 512):  # damage data blocks
        data[off] ^= 0x5A
    sst.write_bytes(bytes(data))
    refused(proc, "Corruption")


def corrupt_value(data_dir: Path, key: bytes, value: bytes) -> None:
    """Silently change a stored value (valid checksums): what only a peer comparison finds."""
    b = Backend(data_dir / "state")
    try:
        hits = 0
        for rk, raw in list(b.scan("key", b"")):
            kv = kv_pb2.KeyValue.FromString(raw)
            if kv.key == key:
                kv.value = value
                wb = b.batch()
                wb.put(rk, kv.SerializeToString(), b.handle("key"))
                b.write(wb, sync=True)
                hits += 1
        assert hits, f"{key!r} not found in {data_dir}"
    finally:
        b.close()


def fill_and_catch_up(leader: ServerProc, target: ServerProc) -> None:
    """20 puts through ``leader``; returns once ``target`` has applied them all."""
    with Client(leader) as c:
        for i in range(20):
            c.kv.Put(pb.PutRequest(key=f"k{i}".encode(), value=b"good"), timeout=10)
        rev = c.kv.Range(pb.RangeRequest(key=b"k0"), timeout=10).header.revision

    def caught_up() -> bool:
        with Client(target) as c:
            got = c.kv.Range(pb.RangeRequest(key=b"k0", serializable=True), timeout=2)
            return got.header.revision >= rev

    wait_for(caught_up, 60, "target caught up")


def corrupted_and_refused(target: ServerProc) -> None:
    """Stop ``target``, change one value behind its checksums: the check refuses it."""
    assert target.stop() == 0
    corrupt_value(target.data_dir, b"k5", b"evil")
    log = refused(target, "found data inconsistency with peers")
    assert "found different hash values from remote peer" in target.log_tail(40), log


def test_initial_corrupt_check(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, extra=["--experimental-initial-corrupt-check"])
    try:
        cluster.start()
        target = cluster.followers()[0]
        fill_and_catch_up(cluster.leader(), target)
        corrupted_and_refused(target)
        # control: the same data dir without the check serves the corrupted value
        target.argv = [a for a in target.argv if a != "--experimental-initial-corrupt-check"]
        target.start(60)
        with Client(target) as c:
            got = c.kv.Range(pb.RangeRequest(key=b"k5", serializable=True), timeout=10)
        assert got.kvs[0].value == b"evil", "the corruption did not take: the test proves nothing"
    finally:
        cluster.stop()


def test_initial_corrupt_check_with_auth_on(tmp_path: Path) -> None:
    """With auth on, a peer's client URL answers HashKV to root only, and the check has no
    user: it asks on the peer port, as etcd does (``/members/hashkv``). (A peer that
    refuses only warns, so a check that asked the client URLs would let the corrupted
    member start: the refusal shows the peers answered.)"""
    cluster = Cluster(tmp_path, 3, extra=["--experimental-initial-corrupt-check"])
    try:
        cluster.start()
        target = cluster.followers()[0]
        fill_and_catch_up(cluster.leader(), target)
        with Client(cluster.leader()) as c:
            a = rpc_pb2_grpc.AuthStub(c.channel)
            a.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=10)
            a.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"), timeout=10)
            a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
            a.AuthEnable(pb.AuthEnableRequest(), timeout=10)
        peers = [p for p in cluster.procs if p is not target]

        def refuses_anonymous(p: ServerProc) -> bool:
            with Client(p) as c:
                try:
                    c.maint.HashKV(pb.HashKVRequest(), timeout=5)
                except grpc.RpcError as e:
                    return "user name is empty" in (e.details() or "")
            return False

        wait_for(lambda: all(refuses_anonymous(p) for p in peers), 60,
                 "both peers to refuse HashKV without a user")
        corrupted_and_refused(target)
    finally:
        cluster.stop()


def test_initial_corrupt_check_over_tls(tmp_path: Path) -> None:
    """The check asks peers for HashKV on their peer URLs: with https peer URLs demanding
    client certificates it dials them with the member's peer certificate (the client
    URLs demand one too). A peer it cannot reach only warns, so a check that failed to
    dial would let the corrupted member start: the refusal shows the peers answered."""
    ca = CertAuthority(tmp_path / "pki")
    cert = ca.issue("member")  # serves both URLs and presents itself to peers
    tls = ClientTLS(ca.cert, cert.cert, cert.key)
    flags = [*FAST, *cert.flags(), f"--trusted-ca-file={ca.cert}", "--client-cert-auth",
             *cert.flags("peer-"), f"--peer-trusted-ca-file={ca.cert}",
             "--peer-client-cert-auth", "--experimental-initial-corrupt-check"]
    ports = [(free_port(), free_port()) for _ in range(3)]
    spec = ",".join(f"m{i}=https://127.0.0.1:{pp}" for i, (_, pp) in enumerate(ports))
    procs = [datastore_proc(tmp_path, f"m{i}", extra=flags, client_port=cp, peer_port=pp,
                            initial_cluster=spec, client_scheme="https", peer_scheme="https",
                            tls=tls)
             for i, (cp, pp) in enumerate(ports)]
    try:
        for p in procs:
            p.launch()
        for p in procs:
            p.wait_ready(60)
        with procs[0].channel() as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in range(20):
                kv.Put(pb.PutRequest(key=f"k{i}".encode(), value=b"good"), timeout=30)
            rev = kv.Range(pb.RangeRequest(key=b"k0"), timeout=10).header.revision
        target = procs[2]

        def caught_up() -> bool:
            with target.channel() as ch:
                got = rpc_pb2_grpc.KVStub(ch).Range(
                    pb.RangeRequest(key=b"k0", serializable=True), timeout=2)
            return got.header.revision >= rev

        wait_for(caught_up, 60, "target caught up")
        assert target.stop() == 0
        corrupt_value(target.data_dir, b"k5", b"evil")
        log = refused(target, "found data inconsistency with peers")
        assert "found different hash values from remote peer" in target.log_tail(40), log
    finally:
        for p in procs:
            p.stop()
