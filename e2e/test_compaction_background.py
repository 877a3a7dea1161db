"""Background compaction with real processes: kill -9 mid-deletion, and apply never stalls.

The datastore deletes compacted revisions in bounded batches after the Compact reply
(etcd 3.5's scheduled compaction). Slowing the batches down with etcd's own knobs
(``--experimental-compaction-batch-limit`` / ``--experimental-compaction-sleep-interval``)
makes "mid-compaction" a state the test can wait for: the server logs a progress line
after its first batch and a ``finished`` line after its last.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cluster_util import log_lines, wait_for
from e2e_util import Client

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.mvcc.compaction import META_FINISHED, META_SCHEDULED, from_i64
from datastore.storage.backend import Backend
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc

PROGRESS = "compaction in progress"
FINISHED = "finished scheduled compaction"
RESUMED = "resuming scheduled compaction"
# ~10 batches a second apart: a slow machine has many seconds to look at the half-done
# state (only the first batch is waited for, so the pause costs the test nothing)
SLOW = ["--experimental-compaction-batch-limit", "4",
        "--experimental-compaction-sleep-interval", "1s"]


def history(c: Client) -> int:
    """The same writes on any server: rewrites, deletes, a txn; returns the last revision."""
    rev = 0
    for i in range(30):
        rev = c.kv.Put(pb.PutRequest(key=b"k%d" % (i % 6), value=b"v%d" % i)).header.revision
    rev = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"k4")).header.revision
    rev = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"k5")).header.revision
    ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"t%d" % j, value=b"x")) for j in range(5)]
    rev = c.kv.Txn(pb.TxnRequest(success=ops)).header.revision
    for i in range(8):
        rev = c.kv.Put(pb.PutRequest(key=b"k%d" % (i % 3), value=b"w%d" % i)).header.revision
    return rev


def hash_kv(c: Client, rev: int) -> tuple[int, int]:
    """(hash, compact revision): etcd 3.4 does not report the hash revision."""
    r = c.maint.HashKV(pb.HashKVRequest(revision=rev))
    return r.hash, r.compact_revision


def state_of(p: ServerProc) -> tuple[list[tuple[bytes, bytes]], int, int]:
    """The ``key`` family and the two markers of a stopped datastore."""
    b = Backend(p.data_dir / "state")
    try:
        return (list(b.scan("key", b"")), from_i64(b.get("meta", META_SCHEDULED), -1),
                from_i64(b.get("meta", META_FINISHED), -1))
    finally:
        b.close()


def test_kill_mid_compaction_resumes_and_matches_etcd(tmp_path: Path) -> None:
    etcd = etcd_proc(tmp_path / "etcd")
    ds = datastore_proc(tmp_path / "ds", extra=SLOW)
    twin = datastore_proc(tmp_path / "twin")  # the same writes, compaction never interrupted
    procs = [etcd, ds, twin]
    for p in procs:
        p.launch()
    try:
        for p in procs:
            p.wait_ready()
        with Client(etcd) as e, Client(ds) as d, Client(twin) as t:
            revs = {history(c) for c in (e, d, t)}
            assert len(revs) == 1, revs
            last = revs.pop()
            at = last - 5
            for c in (e, t):
                c.kv.Compact(pb.CompactionRequest(revision=at, physical=True))
            d.kv.Compact(pb.CompactionRequest(revision=at))
            want = {r: hash_kv(e, r) for r in (at + 1, last)}
            assert want == {r: hash_kv(t, r) for r in want}

            # half done: the first batch is written, the last is far away
            wait_for(lambda: log_lines(ds, PROGRESS), what="the first compaction batch")
            assert {r: hash_kv(d, r) for r in want} == want
            assert not log_lines(ds, FINISHED), "the compaction finished too early to test"
        ds.kill()
        assert state_of(ds)[1:] == (at, -1)  # scheduled, not finished

        ds.start()  # restarted mid-compaction, still slow: HashKV must not see it
        with Client(ds) as d:
            assert log_lines(ds, RESUMED)
            assert {r: hash_kv(d, r) for r in want} == want
            assert not log_lines(ds, FINISHED)
        ds.kill()

        ds.argv = [a for a in ds.argv if a not in SLOW]  # a third start, at full speed
        ds.start()
        with Client(ds) as d, Client(etcd) as e:
            wait_for(lambda: log_lines(ds, FINISHED), what="the resumed compaction to finish")
            assert {r: hash_kv(d, r) for r in want} == want
            for c in (d, e):
                c.kv.Put(pb.PutRequest(key=b"after", value=b"1"))
            assert hash_kv(d, last + 1) == hash_kv(e, last + 1)
            with Client(twin) as t:
                t.kv.Put(pb.PutRequest(key=b"after", value=b"1"))
        ds.stop()
        twin.stop()
        got, expect = state_of(ds), state_of(twin)
        assert got[1:] == expect[1:] == (at, at)
        assert got[0] == expect[0]  # byte for byte what an uninterrupted run leaves
    finally:
        for p in procs:
            p.stop()


def test_physical_compaction_answers_once_the_deletion_is_done(tmp_path: Path) -> None:
    ds = datastore_proc(tmp_path / "ds", extra=["--experimental-compaction-batch-limit", "4",
                                                "--experimental-compaction-sleep-interval",
                                                "50ms"])
    ds.start()
    try:
        with Client(ds) as d:
            last = history(d)
            d.kv.Compact(pb.CompactionRequest(revision=last - 5, physical=True))
            assert len(log_lines(ds, PROGRESS)) >= 1  # it took several batches ...
            assert log_lines(ds, FINISHED)  # ... and the reply waited for the last one
            d.kv.Compact(pb.CompactionRequest(revision=last - 2, physical=True))
            assert len(log_lines(ds, FINISHED)) == 2
    finally:
        ds.stop()


def _load(c: Client, keys: int, rounds: int) -> int:
    """keys x rounds revisions on disk, one txn of ``keys`` puts per round."""
    rev = 0
    for r in range(rounds):
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"load/%05d" % k, value=b"%d" % r))
               for k in range(keys)]
        rev = c.kv.Txn(pb.TxnRequest(success=ops)).header.revision
    return rev


class Putter(threading.Thread):
    """One client putting in a loop; records (start, end) of every acknowledged put."""

    def __init__(self, p: ServerProc) -> None:
        super().__init__(daemon=True)
        self.p = p
        self.times: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with Client(self.p) as c:
            i = 0
            while not self.stop.is_set():
                t0 = time.monotonic()
                c.kv.Put(pb.PutRequest(key=b"live/%d" % (i % 50), value=b"x"), timeout=10)
                self.times.append((t0, time.monotonic()))
                i += 1

    def count(self) -> int:
        return len(self.times)


def p50(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def p90(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.9)]


def p99(xs: list[float]) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def test_puts_are_not_stalled_by_a_large_physical_compaction(tmp_path: Path) -> None:
    # 40k revisions; batches of 200 with the default 10 ms pause take a few seconds
    ds = datastore_proc(tmp_path / "ds", extra=["--experimental-compaction-batch-limit", "200"])
    ds.start()
    putter = Putter(ds)
    try:
        with Client(ds) as c:
            last = _load(c, 100, 400)
            putter.start()
            wait_for(lambda: putter.count() >= 150, what="puts before the compaction")
            before_end = time.monotonic()
            c.kv.Compact(pb.CompactionRequest(revision=last))
            started = time.monotonic()
            # puts acknowledged while the deletion is still running (no finished line yet)
            wait_for(lambda: log_lines(ds, FINISHED), timeout=120, what="the compaction")
            finished = time.monotonic()
        putter.stop.set()
        putter.join()
        before = [b - a for a, b in putter.times if b <= before_end]
        during = [b - a for a, b in putter.times if started <= a and b <= finished]
        print(f"put p99 before {p99(before) * 1e3:.1f} ms ({len(before)} puts), during "
              f"{p99(during) * 1e3:.1f} ms ({len(during)} puts), max during "
              f"{max(during, default=0) * 1e3:.1f} ms, compaction {finished - started:.2f} s")
        assert len(during) >= 20, "puts were not acknowledged while the compaction ran"
        # robust bounds for a loaded CI machine (the benchmark measures p99 properly)
        assert p50(during) < 3 * p50(before) + 0.05
        # the bulk of them, not the single worst one (one slow put on a shared machine is noise)
        assert p90(during) < 1.0
        ds.stop()
        keys, scheduled, done = state_of(ds)
        assert scheduled == done == last
        assert sum(1 for k, _ in keys if int.from_bytes(k[:8], "big") <= last) == 100
    finally:
        putter.stop.set()
        ds.stop()


def test_follower_installing_a_snapshot_mid_compaction_resumes_it(tmp_path: Path) -> None:
    from cluster_util import Cluster, status

    very_slow = ["--experimental-compaction-batch-limit", "1",
                 "--experimental-compaction-sleep-interval", "500ms"]
    c = Cluster(tmp_path, extra=["--snapshot-count", "50",
                                 "--experimental-snapshot-catchup-entries", "10",
                                 *very_slow]).start()
    try:
        lagging = c.followers()[0]
        leader = c.leader()
        lagging.stop()
        with Client(leader) as d:
            last = history(d)
            d.kv.Compact(pb.CompactionRequest(revision=last - 5))
            for i in range(120):  # the raft log is compacted: the follower needs a snapshot
                d.kv.Put(pb.PutRequest(key=b"s/%03d" % i, value=b"x"))
        assert not log_lines(leader, FINISHED)  # the image will hold a half-done compaction
        lagging.start()
        wait_for(lambda: len({status(p).raftAppliedIndex for p in c.procs}) == 1, 60,
                 "applied indexes converge")
        with Client(leader) as d, Client(lagging) as f:
            rev = d.kv.Range(pb.RangeRequest(key=b"s/000")).header.revision
            assert hash_kv(f, rev) == hash_kv(d, rev)
        # it was down before the compaction was proposed: only the image can carry it
        assert log_lines(lagging, "installed a snapshot from the leader")
        assert log_lines(lagging, RESUMED)
        assert not log_lines(leader, FINISHED)
    finally:
        c.stop()
