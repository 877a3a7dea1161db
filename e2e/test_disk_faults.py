"""Disk faults under real server processes, injected by the faultfs LD_PRELOAD shim.

* fsync/fdatasync failing with EIO: the node loop fails, the process exits non-zero with
  a clear log line, and after a restart (on the durable image only) every acknowledged
  write is there. With three members, the others keep serving.
* Disk full (ENOSPC on every write): the member stops cleanly without losing an
  acknowledged write, and serves again once space is back.
"""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest
from cluster_util import Cluster, wait_for
from e2e_util import Client
from test_crash import Ack, Writers, check_recovered

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.testing.faultfs import FaultDisk, build_shim
from datastore.testing.procs import ServerProc, datastore_proc

SEED = 20261203


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.getbasetemp() / "faultfs")


class TolerantWriters(Writers):
    """Writers that keep going through failed puts (the election after a member died).

    A failed put may still have been applied; the checker allows unacknowledged writes.
    """

    failures = 0

    def _run(self, proc: ServerProc, prefix: str, salt: bytes) -> None:
        with Client(proc) as c:
            j = 0
            while not self.stop.is_set():
                key = f"{prefix}/{j:07d}".encode()
                value = salt + j.to_bytes(4, "big") * (1 + j % 7)
                j += 1
                try:
                    resp = c.kv.Put(pb.PutRequest(key=key, value=value), timeout=10)
                except grpc.RpcError:
                    with self.cond:
                        self.failures += 1
                    self.stop.wait(0.05)  # back-off before the next put, not a sync point
                    continue
                with self.cond:
                    self.acks.append(Ack(key, value, resp.header.revision))
                    self.cond.notify_all()


def member(tmp_path: Path, shim: Path, name: str, eio_after: int | None = None,
           extra: list[str] | None = None) -> tuple[ServerProc, FaultDisk]:
    proc = datastore_proc(tmp_path, name, extra=extra)
    disk = FaultDisk(proc.data_dir, tmp_path / f"{name}.durable", shim)
    proc.env.update(disk.env(eio_after=eio_after))
    return proc, disk


def wait_exit(proc: ServerProc, timeout: float = 60.0) -> int:
    assert proc.popen is not None
    rc = proc.popen.wait(timeout)
    return rc


def writers_stopped(w: Writers, timeout: float = 60.0) -> list[Ack]:
    """Wait until every writer saw the member fail, then return the acks."""
    with w.cond:
        assert w.cond.wait_for(lambda: len(w.errors) == len(w.threads), timeout), \
            "writers did not see the member fail"
    return w.join()


def test_fsync_eio_single_member(tmp_path: Path, shim: Path) -> None:
    rng = random.Random(SEED)
    proc, disk = member(tmp_path, shim, "eio0", eio_after=20)
    try:
        proc.start()
        w = Writers(proc, "eio", rng)
        w.wait_acks(30)
        disk.arm_eio()  # 20 more fsyncs succeed, then the disk fails every one
        acks = writers_stopped(w)
        rc = wait_exit(proc)
        log = proc.log_tail(200)
        print(f"exit code {rc}, {len(acks)} acked; errors {w.errors[:2]}")
        assert rc != 0, f"the member exited cleanly after a failed fsync:\n{log}"
        assert "injecting EIO" in log, "the fault was not injected"
        assert "raft log write failed" in log and "Input/output error" in log, log
        disk.pull_plug()  # the failed disk may have lost anything not synced
        proc.env = {k: v for k, v in proc.env.items() if not k.startswith("FAULTFS_EIO")}
        disk.eio_flag.unlink()
        proc.start()
        check_recovered(proc, acks, "after fsync EIO")
    finally:
        proc.stop()


def test_fsync_eio_leader_of_three(tmp_path: Path, shim: Path) -> None:
    """The leader's disk fails: it exits, the other two elect a leader and keep serving."""
    rng = random.Random(SEED + 1)
    cluster = Cluster(tmp_path, 3)
    disks = {p.name: FaultDisk(p.data_dir, tmp_path / f"{p.name}.durable", shim)
             for p in cluster.procs}
    for p in cluster.procs:
        p.env.update(disks[p.name].env(eio_after=10))
    try:
        cluster.start()
        leader = cluster.leader()
        others = [p for p in cluster.procs if p is not leader]
        w_lead = Writers(leader, "lead", rng)
        w_lead.wait_acks(20)
        disks[leader.name].arm_eio()
        acks = writers_stopped(w_lead)
        rc = wait_exit(leader)
        assert rc != 0 and "raft log write failed" in leader.log_tail(200), leader.log_tail()
        # the survivors elect a leader and acknowledge writes after the leader died
        w_others = [TolerantWriters(p, f"via-{p.name}", rng) for p in others]
        for w in w_others:
            w.wait_acks(50, timeout=90)
        for w in w_others:
            acks += w.join()
        print(f"{len(acks)} acked; puts failed during the election: "
              f"{sum(w.failures for w in w_others)}")
        wait_for(lambda: cluster.leader_id(others), 60, "a leader among the survivors")
        check_recovered(others[0], acks, "survivors after the leader's disk failed")
        # the failed member comes back on its durable image and catches up
        disks[leader.name].pull_plug()
        leader.env = {k: v for k, v in leader.env.items() if not k.startswith("FAULTFS_EIO")}
        leader.start(60)
        cluster.wait_leader(timeout=60)
        check_recovered(leader, acks, "failed member after restart")
    finally:
        cluster.stop()


def test_disk_full_stops_and_recovers(tmp_path: Path, shim: Path) -> None:
    rng = random.Random(SEED + 2)
    proc, disk = member(tmp_path, shim, "full0")
    try:
        proc.start()
        w = Writers(proc, "full", rng)
        w.wait_acks(30)
        disk.fill()
        acks = writers_stopped(w)
        rc = wait_exit(proc)
        log = proc.log_tail(200)
        print(f"exit code {rc}, {len(acks)} acked; errors {w.errors[:2]}")
        assert rc != 0 and "No space left on device" in log, log
        # the process is gone while the disk is full: nothing else to serve; power goes
        # too, for good measure, and space comes back
        disk.pull_plug()
        disk.free()
        proc.start()
        nxt = check_recovered(proc, acks, "after disk full")
        assert nxt > len(acks)
    finally:
        proc.stop()
