"""Power loss, not just process death: unsynced writes are dropped when the plug is pulled.

kill -9 keeps the page cache, so a server that never fsyncs passes every crash test. Here
each member runs under the faultfs LD_PRELOAD shim (datastore/testing/faultfs): after
SIGKILL, the data dir is rewritten to what had been fsynced, file by file, and the member
restarts from that. Invariants (same checker as test_crash.py): every acknowledged put is
present with its revision; revisions of present keys are exactly 2..R; the next put gets
R + 1. ``test_checker_detects_missing_fsync`` shows the test can fail: with the WAL sync
switched off (test-only DATASTORE_UNSAFE_NO_FSYNC=1) acknowledged writes are lost.

DS_POWERLOSS_SEED picks the seed (printed) for kill points and values.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from cluster_util import Cluster
from e2e_util import Client
from test_crash import Ack, Writers, check_recovered

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.server.raftlog import DurableStorage
from datastore.storage.backend import UNSAFE_NO_FSYNC_ENV, WAL_FAMILIES, Backend
from datastore.testing.faultfs import FaultDisk, build_shim
from datastore.testing.procs import ServerProc, datastore_proc

SEED = int(os.environ.get("DS_POWERLOSS_SEED", "20261202"))
# A small snapshot count makes the raft log compact during the test, so the state
# database (never fsynced on its own) must be durable before log entries are dropped.
SMALL_SNAPSHOTS = ["--snapshot-count", "60", "--experimental-snapshot-catchup-entries", "10"]


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.getbasetemp() / "faultfs")


def member(tmp_path: Path, shim: Path, name: str, extra: list[str] | None = None,
           env: dict[str, str] | None = None) -> tuple[ServerProc, FaultDisk]:
    proc = datastore_proc(tmp_path, name, extra=extra)
    disk = FaultDisk(proc.data_dir, tmp_path / f"{name}.durable", shim)
    proc.env.update({**disk.env(), **(env or {})})
    return proc, disk


def lose_power(procs: list[ServerProc], disks: list[FaultDisk]) -> None:
    """SIGKILL every process first (all at once), then drop what was never fsynced."""
    for p in procs:
        p.signal(signal.SIGKILL)
    for p in procs:
        if p.popen is not None:
            p.popen.wait()
    for d in disks:
        print(f"pull plug {d.data_dir.name}: {d.pull_plug()}")


def run_rounds(proc: ServerProc, disk: FaultDisk, targets: list[int],
               rng: random.Random, seed: int = SEED) -> list[Ack]:
    all_acks: list[Ack] = []
    for rnd, n in enumerate(targets):
        ctx = f"seed={seed} round={rnd} power-loss-after={n}"
        w = Writers(proc, f"r{rnd}", rng)
        w.wait_acks(n)
        lose_power([proc], [disk])
        acks = w.join()
        all_acks.extend(acks)
        t0 = time.monotonic()
        proc.start()
        print(f"{ctx}: {len(acks)} acked, restart took {time.monotonic() - t0:.2f}s")
        check_recovered(proc, all_acks, ctx)
    return all_acks


def test_power_loss_single_member(tmp_path: Path, shim: Path) -> None:
    rng = random.Random(SEED)
    proc, disk = member(tmp_path, shim, "pl0", extra=SMALL_SNAPSHOTS)
    try:
        proc.start()
        run_rounds(proc, disk, [rng.randint(1, 10), rng.randint(150, 250)], rng)
    finally:
        proc.stop()


def test_checker_detects_missing_fsync(tmp_path: Path, shim: Path) -> None:
    """The same scenario with the WAL sync removed must lose acknowledged writes."""
    rng = random.Random(SEED)
    proc, disk = member(tmp_path, shim, "nofsync", env={UNSAFE_NO_FSYNC_ENV: "1"})
    try:
        proc.start()
        with pytest.raises(AssertionError, match="lost") as err:
            run_rounds(proc, disk, [100], rng)
        print(f"detected as expected: {str(err.value).splitlines()[0]}")
    finally:
        proc.stop()


def compacted_log_index(data_dir: Path) -> int:
    """Where the durable raft log starts (its compaction point), read from the data dir."""
    wal = Backend(data_dir / "wal", WAL_FAMILIES)
    try:
        return DurableStorage(wal).snap_meta.index
    finally:
        wal.close()


def test_state_db_is_durable_before_the_log_is_compacted_past_it(tmp_path: Path,
                                                                  shim: Path) -> None:
    """The state database is fsynced only before a raft log compaction: an apply batch
    alone is never synced, since the log can replay it. Power is cut once the log has been
    compacted (durably) past applies made since the last state sync would have covered;
    the member must come back with every acknowledged put, not a state database behind
    the start of its log (which it refuses as corrupt)."""
    proc, disk = member(tmp_path, shim, "order", extra=[
        "--snapshot-count", "20", "--experimental-snapshot-catchup-entries", "5"])
    acked: dict[bytes, bytes] = {}
    try:
        proc.start()
        with Client(proc) as c:
            for i in range(100):  # several compactions; each put's ack syncs the raft log
                key, value = b"order/%03d" % i, b"v%d" % i
                c.kv.Put(pb.PutRequest(key=key, value=value), timeout=10)
                acked[key] = value
        lose_power([proc], [disk])
        assert compacted_log_index(proc.data_dir) > 50, "the durable log was not compacted"
        proc.start()
        with Client(proc) as c:
            resp = c.kv.Range(pb.RangeRequest(key=b"order/", range_end=b"order0"), timeout=10)
        assert {kv.key: kv.value for kv in resp.kvs} == acked
    finally:
        proc.stop()


@pytest.mark.slow
def test_power_loss_single_member_soak(tmp_path: Path, shim: Path) -> None:
    rng = random.Random(SEED + 2)
    proc, disk = member(tmp_path, shim, "soak", extra=SMALL_SNAPSHOTS)
    try:
        proc.start()
        run_rounds(proc, disk, [rng.randint(1, 400) for _ in range(12)], rng, SEED + 2)
    finally:
        proc.stop()


def test_power_loss_three_members_at_once(tmp_path: Path, shim: Path) -> None:
    cluster_rounds(tmp_path, shim, SEED + 1, 1)


@pytest.mark.slow
def test_power_loss_three_members_soak(tmp_path: Path, shim: Path) -> None:
    cluster_rounds(tmp_path, shim, SEED + 3, 6)


def cluster_rounds(tmp_path: Path, shim: Path, seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    cluster = Cluster(tmp_path, 3, extra=SMALL_SNAPSHOTS)
    disks = [FaultDisk(p.data_dir, tmp_path / f"{p.name}.durable", shim) for p in cluster.procs]
    for p, d in zip(cluster.procs, disks, strict=True):
        p.env.update(d.env())
    try:
        cluster.start()
        all_acks: list[Ack] = []
        for rnd, n in enumerate([rng.randint(100, 200) for _ in range(rounds)]):
            ctx = f"seed={seed} round={rnd} cluster power loss after {n}"
            writers = [Writers(p, f"r{rnd}/{p.name}", rng) for p in cluster.procs]
            for w in writers:
                w.wait_acks(n // 3)
            lose_power(cluster.procs, disks)
            for w in writers:
                all_acks.extend(w.join())
            for p in cluster.procs:
                p.launch()
            for p in cluster.procs:
                p.wait_ready(60)
            cluster.wait_leader(timeout=60)
            print(f"{ctx}: {len(all_acks)} acked in total")
            check_recovered(cluster.procs[rnd % 3], all_acks, ctx)
    finally:
        cluster.stop()
