"""Physical compaction in the background, in bounded batches (etcd 3.5's scheduleCompaction).

Compacting at revision R has two halves. At apply (``KVStore.compact``) the in-memory
index forgets history before R, reads below R fail with ErrCompacted from then on, and
the meta marker ``scheduledCompactRev`` = R goes into the apply's own WriteBatch. The
revisions the index no longer needs are deleted later, here: ``batch_limit`` keys per
WriteBatch with a pause between batches, so apply and reads never wait for a long scan.
The last batch writes ``finishedCompactRev`` = R.

A restart (or an installed snapshot) that finds scheduled > finished compacts its index
again and starts the deletion over from the first revision, as etcd does. Deleting is
idempotent and goes in revision order, so a kill at any point ends, once resumed, with the
same data as an uninterrupted run.

Only revisions <= R that the index keeps for nobody are deleted; later writes have larger
revisions and are never looked at. Jobs run one at a time, in order: a revision an earlier
job drops is never one a later job's keep set needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from datastore.mvcc.revision import REV_BYTES_LEN, Revision, main_rev_prefix, rev_to_bytes
from datastore.storage.backend import Backend

log = logging.getLogger("datastore.mvcc.compaction")

META_SCHEDULED = b"scheduledCompactRev"
META_FINISHED = b"finishedCompactRev"
META_LEGACY = b"compact_rev"  # before background compaction: written when all was deleted

DEFAULT_BATCH_LIMIT = 1000  # etcd's --experimental-compaction-batch-limit
DEFAULT_PAUSE_S = 0.01  # etcd's --experimental-compaction-sleep-interval (3.6; 10 ms in 3.5)
PROGRESS_EVERY_S = 1.0


def i64(v: int) -> bytes:
    return v.to_bytes(8, "big", signed=True)


def from_i64(b: bytes | None, default: int) -> int:
    return int.from_bytes(b, "big", signed=True) if b else default


@dataclass
class CompactionJob:
    rev: int
    keep: set[Revision]
    keep_bytes: set[bytes] | None = None  # encoded keep set, made by the first batch
    cursor: bytes = b""  # the next key to look at
    scanned: int = 0
    deleted: int = 0
    batches: int = 0
    started: float = 0.0
    last_log: float = 0.0


class Compactions:
    """The queue of scheduled physical compactions of one store, and the loop that runs it.

    Everything runs on the event loop's thread (apply, reads, these batches), so a batch
    never interleaves with an apply batch under construction.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._key_cf = backend.cf("key")
        self._key_handle = backend.handle("key")
        self._meta_handle = backend.handle("meta")
        self.jobs: deque[CompactionJob] = deque()
        self.finished_rev = -1
        self.batch_limit = DEFAULT_BATCH_LIMIT
        self.pause_s = DEFAULT_PAUSE_S
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()

    # ---- markers -----------------------------------------------------------------------
    def load_markers(self) -> tuple[int, int]:
        """(scheduled, finished) as recorded on disk; -1 when there is none."""
        get = self.backend.get
        finished = from_i64(get("meta", META_FINISHED), -1)
        if finished < 0:
            finished = from_i64(get("meta", META_LEGACY), -1)
        scheduled = from_i64(get("meta", META_SCHEDULED), -1)
        return max(scheduled, finished), finished

    def reset(self, finished: int) -> None:
        """Forget every job (the state on disk was reloaded: restart or snapshot)."""
        self.jobs.clear()
        self.finished_rev = finished
        waiters, self._waiters = self._waiters, []
        for _, fut in waiters:  # the state they waited on is gone: do not hang them
            if not fut.done():
                fut.set_result(None)

    def schedule(self, rev: int, keep: set[Revision]) -> None:
        """Queue the deletion of every revision <= ``rev`` outside ``keep``."""
        self.jobs.append(CompactionJob(rev, keep))
        self._wake.set()

    @property
    def pending(self) -> bool:
        return bool(self.jobs)

    def pending_keep(self) -> set[Revision] | None:
        """The keep set of the last scheduled compaction, while it is not finished."""
        return self.jobs[-1].keep if self.jobs else None

    # ---- the work -------------------------------------------------------------------------
    def step(self) -> bool:
        """Delete one batch of the oldest job; True when that job finished with it."""
        job = self.jobs[0]
        if job.keep_bytes is None:  # here rather than in apply, which scheduled the job
            job.started = job.last_log = time.monotonic()
            job.keep_bytes = {rev_to_bytes(*r) for r in job.keep}
        end = main_rev_prefix(job.rev + 1)
        keep = job.keep_bytes
        wb = self.backend.batch()
        h = self._key_handle
        it = self._key_cf.iter()
        it.seek(job.cursor)
        n = deleted = 0
        last = b""
        limit = self.batch_limit
        while n < limit and it.valid():
            k = it.key()
            if k >= end:
                break
            n += 1
            last = k
            if k[:REV_BYTES_LEN] not in keep:
                wb.delete(k, h)
                deleted += 1
            it.next()
        it.status()
        del it
        done = n < limit
        if done:
            wb.put(META_FINISHED, i64(job.rev), self._meta_handle)
        self.backend.write(wb, sync=False)
        job.cursor = last + b"\x00" if last else job.cursor
        job.scanned += n
        job.deleted += deleted
        job.batches += 1
        now = time.monotonic()
        if done:
            self.jobs.popleft()
            self.finished_rev = job.rev
            log.info("finished scheduled compaction", extra={
                "compact_revision": job.rev, "deleted": job.deleted, "scanned": job.scanned,
                "batches": job.batches, "took_s": round(now - job.started, 3)})
            self._release()
        elif job.batches == 1 or now - job.last_log >= PROGRESS_EVERY_S:
            job.last_log = now
            log.info("compaction in progress", extra={
                "compact_revision": job.rev, "deleted": job.deleted, "scanned": job.scanned,
                "batches": job.batches})
        return done

    def run_all(self) -> None:
        """Finish every queued job now, without pauses (tools and unit tests)."""
        while self.jobs:
            self.step()

    async def run(self) -> None:
        """The background loop: a batch, a pause, a batch ... while there is work."""
        while True:
            if not self.jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            done = self.step()
            # a pause between batches lets apply and reads in; none after the last one
            await asyncio.sleep(0 if done else self.pause_s)

    # ---- physical=true ------------------------------------------------------------------------
    async def wait_finished(self, rev: int) -> None:
        """Return once every revision a compaction at ``rev`` drops has been deleted."""
        if self.finished_rev >= rev or not self.jobs:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((rev, fut))
        await fut

    def _release(self) -> None:
        still = []
        for rev, fut in self._waiters:
            if rev <= self.finished_rev or not self.jobs:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((rev, fut))
        self._waiters = still
