"""EtcdServer: the member's core, owning storage, the raft node loop and the apply path.

Request path (etcd's v3_server.go): a write becomes an ``InternalRaftRequest`` with a
unique id, a future is registered under that id, and the encoded request is queued. The
node loop hands every queued request to raft at once, persists the resulting entries
with ONE fsync (in an I/O thread, so requests keep arriving and form the next batch),
sends messages, applies committed entries as ONE WriteBatch, resolves the futures and
calls ``advance``. Linearizable reads join the next ReadIndex round: one round serves
every read that was waiting when it started.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import secrets
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.internalpb.internal_pb2 import InternalRaftRequest, MemberRecord
from datastore.api.raftpb import raft_pb2 as raft_pb
from datastore.auth.store import AuthStore
from datastore.auth.tokens import new_token_provider
from datastore.lease.lessor import Lessor
from datastore.logsetup import exit_now
from datastore.mvcc.kvstore import KVStore
from datastore.mvcc.watchable import WatchHub
from datastore.raft.core import Config as RaftConfig
from datastore.raft.rawnode import RawNode
from datastore.raft.types import (
    ConfState,
    EntryType,
    HardState,
    ProposalDropped,
    RaftError,
    Ready,
    StateType,
)
from datastore.server.alarms import AlarmStore
from datastore.server.applier import Applier, applied_index
from datastore.server.cluster_ops import ClusterOps, join_existing
from datastore.server.compactor import run_compactor
from datastore.server.config import VERSION, Config
from datastore.server.failpoint import failpoint
from datastore.server.features import ClusterVersion, DowngradeRefused, fatal_downgrade
from datastore.server.membership import Membership, compute_cluster_id, compute_member_id
from datastore.server.raftlog import DurableStorage
from datastore.server.snapshot_image import recover_install
from datastore.server.stats import SLOW_APPLY_S, ServerStats
from datastore.server.version_monitor import VersionMonitor
from datastore.storage.backend import (
    CORRUPT_ACTION,
    WAL_FAMILIES,
    Backend,
    CorruptDataError,
)
from datastore.util.clock import MonotonicClock

if TYPE_CHECKING:
    from datastore.api.grpcmetrics import GrpcMetrics
    from datastore.metrics.registry import Exposition

log = logging.getLogger("datastore.server")

REQUEST_TIMEOUT_S = 7.0  # etcd: 5 s + 2 x election timeout by default


def fatal_disk_error(what: str, err: BaseException) -> NoReturn:
    """Exit at once when a disk write fails (EIO, ENOSPC, ...), like etcd's log.Fatal.

    After a failed fsync the page cache may hold data the disk never got: going on (or
    retrying the fsync, which can report success for lost data) could acknowledge a write
    that a power loss would drop. The durable log on restart is the truth.
    """
    log.critical("%s; stopping so that no unpersisted write is acknowledged", what,
                 extra={"error": str(err), "action": "check the disk (free space, I/O "
                        "errors in the kernel log), then restart the member: it recovers "
                        "from its durable raft log"})
    exit_now(1)


def check_wal_dir(cfg: Config) -> Path:
    """The raft log's directory; a data dir whose log is there refuses another --wal-dir
    (the member would start with an empty log beside its state)."""
    data = Path(cfg.resolved_data_dir)
    wal_dir = Path(cfg.resolved_wal_dir)
    own = data / "wal"
    if cfg.wal_dir and (own / "CURRENT").exists() and own.resolve() != wal_dir.resolve():
        raise ValueError(f"{own} holds this member's raft log, but --wal-dir is {cfg.wal_dir}: "
                         f"with the member stopped, move {own} to {cfg.wal_dir}, or drop --wal-dir")
    return wal_dir


class EtcdServer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        data = Path(cfg.resolved_data_dir)
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)
        self.data_dir = data
        wal_dir = check_wal_dir(cfg)
        self.backend = Backend(data / "state", unsafe_no_fsync=cfg.unsafe_no_fsync)
        if not (wal_dir / "CURRENT").exists() and (applied := applied_index(self.backend)):
            self.backend.close()
            raise ValueError(
                f"no raft log at {wal_dir}, but the state in {data} has entries applied up to "
                f"{applied}: start the member with the --wal-dir its log is in")
        self.wal = Backend(wal_dir, WAL_FAMILIES, unsafe_no_fsync=cfg.unsafe_no_fsync)
        recover_install(data, self.backend)  # an interrupted snapshot install, before any read
        self.clock = MonotonicClock()
        try:
            self.lessor = Lessor(self.backend, self.clock, cfg.min_lease_ttl)
            self.kv = KVStore(self.backend, self.lessor)
            self.kv.compactions.batch_limit = cfg.compaction_batch_limit
            self.kv.compactions.pause_s = cfg.compaction_sleep_interval_s
            self.hub = WatchHub(self.kv)
            self.alarms = AlarmStore(self.backend)
            self.auth = AuthStore(self.backend,
                                  new_token_provider(cfg.auth_token, cfg.auth_token_ttl_s),
                                  cfg.bcrypt_cost)
            self.applier = Applier(self.backend, self.kv, self.lessor, self.hub, self.alarms,
                                   self.auth)
            self.members = Membership(self.backend)
            self.cluster_version = ClusterVersion(self.backend)
            self.cluster_version.check_local("recorded in the data dir")
            self.applier.register("cluster_version_set", self._apply_cluster_version)
            self.storage = DurableStorage(self.wal, cfg.raft_log_cache_bytes)
            self._bootstrap()
            self._finish_snapshot_install()
            self.lessor.restore()
            self.lessor.attach_restored((kv.lease, kv.key) for kv in self.kv.restore())
        except Exception as e:
            # a damaged block is found only when read: here, before anything is served
            if "Corruption" in str(e):
                raise CorruptDataError(f"reading {data}: {e}; {CORRUPT_ACTION}") from e
            raise
        self._reconcile_commit()
        self.member_id = self.members.local_id
        self.cluster_id = self.members.cluster_id
        self.node = RawNode(RaftConfig(
            id=self.member_id, storage=self.storage, applied=self.applier.applied_index,
            election_tick=cfg.election_ticks, heartbeat_tick=1,
            check_quorum=True, pre_vote=True,
            # committed entries handed to apply at once, like the log cache: bounded memory
            max_committed_size_per_ready=min(max(cfg.raft_log_cache_bytes, 1 << 20), 64 << 20)))
        self.leader_id = 0
        self.is_leader = False
        self._io = ThreadPoolExecutor(1, thread_name_prefix="raft-io")
        self._wake = asyncio.Event()
        self._proposals: list[tuple[int, bytes]] = []
        self._held: list[tuple[int, bytes]] = []  # dropped for want of a leader: retried
        self.lead_elected_at = 0.0  # monotonic time a leader was last learned (etcd's leadElectedTime)
        self._waiters: dict[int, asyncio.Future[object]] = {}
        self._deadlines: deque[tuple[float, float, int]] = deque()  # (deadline, start, id)
        self._read_deadlines: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._reads_waiting: list[asyncio.Future[None]] = []
        self._reads_inflight: dict[bytes, list[asyncio.Future[None]]] = {}
        self._reads_ready: deque[tuple[int, list[asyncio.Future[None]]]] = deque()
        self._read_ctx = itertools.count(1)
        self._req_ids = itertools.count((self.member_id & 0xFFFF) << 48 | (int(time.time()) & 0xFFFFFF) << 24)
        self._revoking: dict[int, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self.started_at = time.time()
        self.stats = ServerStats()
        self.grpc_metrics: GrpcMetrics | None = None  # the client gRPC server's counters
        self.metrics_exposition: Exposition | None = None  # its registry, built at the first scrape
        self.transport = None  # peer transport: multi-member clusters plug in here
        self.cluster_ops = ClusterOps(self)  # conf changes, snapshots, publish

    def _apply_cluster_version(self, req: object, wb: object, out: object) -> None:
        try:
            self.cluster_version.apply(req, wb, out)  # type: ignore[arg-type]
        except DowngradeRefused as e:
            fatal_downgrade(e)

    # ---- bootstrap -------------------------------------------------------------------
    def _bootstrap(self) -> None:
        if self.members.bootstrapped:
            return
        cfg = self.cfg
        if cfg.initial_cluster_state == "existing":
            join_existing(self)  # learn the cluster from a peer; never bootstrap a new one
            return
        cluster = cfg.initial_cluster_map()
        if cfg.name not in cluster:
            raise ValueError(f"--initial-cluster has no entry for --name {cfg.name!r}")
        records = [
            MemberRecord(ID=compute_member_id(urls, cfg.initial_cluster_token), name=name,
                         peer_urls=urls)
            for name, urls in cluster.items()
        ]
        local = next(m for m in records if m.name == cfg.name)
        local.client_urls.extend(cfg.advertise_client_urls)
        cluster_id = compute_cluster_id([m.ID for m in records])
        self.members.bootstrap(local.ID, cluster_id, records)
        self.storage.set_conf_state(ConfState(voters=tuple(sorted(m.ID for m in records))))
        log.info("bootstrapped new cluster", extra={"cluster_id": f"{cluster_id:x}",
                                                     "member_id": f"{local.ID:x}"})

    def _finish_snapshot_install(self) -> None:
        """Finish a snapshot install that crashed before the raft log recorded it.

        ``install_snapshot`` writes the state image and the snapshot's metadata in one
        batch, before the raft log saves the snapshot; if the process died in between,
        the state is ahead of the log. Record the snapshot in the log now, as the Ready
        would have (no message was sent for it: messages go out after persisting).
        """
        from datastore.server.cluster_ops import installed_snapshot_meta

        meta = installed_snapshot_meta(self.backend)
        st = self.storage
        if meta is None or meta.index <= st.snap_meta.index:
            return  # the raft log recorded it (or a later one)
        if meta.index <= st.last_index() and st.term(meta.index) == meta.term:
            return  # the log holds the snapshot's entry: nothing was lost
        if self.applier.applied_index < meta.index:
            return  # not our image: _reconcile_commit reports the inconsistency
        log.warning("finishing an interrupted snapshot install", extra={"index": meta.index})
        st.adopt_snapshot(meta)

    def _reconcile_commit(self) -> None:
        """The applied index may be ahead of the persisted commit index after a crash.

        The apply batch (not fsynced) and the hard state (fsynced in the I/O thread) are
        written concurrently, so either can reach disk first. Entries are only applied
        once committed and persisted, so the applied index is a valid commit index.
        """
        applied = self.applier.applied_index
        hs = self.storage.hard_state
        if applied < self.storage.snap_meta.index:
            # The entries between the two were compacted away: replaying is impossible and
            # serving would expose a state missing acknowledged writes.
            raise CorruptDataError(
                f"state applied up to {applied} but the raft log was compacted up to "
                f"{self.storage.snap_meta.index}: the state db lost writes; {CORRUPT_ACTION}")
        if applied > hs.commit:
            if applied > self.storage.last_index():
                raise CorruptDataError(f"state applied up to {applied} but the raft log ends "
                                       f"at {self.storage.last_index()}; {CORRUPT_ACTION}")
            self.storage.save(HardState(hs.term, hs.vote, applied), (), None, True)

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        conf = self.storage.conf_state
        if list(conf.voters) == [self.member_id]:
            self.node.campaign()  # a single voter need not wait out an election timeout
        loop = asyncio.get_running_loop()
        for coro in (self._run(), self._ticker(), self.hub.run(), self._lease_loop(),
                     self._progress_loop(), run_compactor(self), self._compaction_loop(),
                     VersionMonitor(self).run()):
            self._tasks.append(loop.create_task(coro))
        self._wake.set()

    async def wait_leader(self, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while self.leader_id == 0:
            if time.monotonic() > deadline:
                raise errors.ErrNoLeader()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(errors.ErrStopped())
        # off the loop: a blocked fsync must not freeze the loop (and with it the signals)
        await asyncio.get_running_loop().run_in_executor(None, self._io.shutdown, True)
        self.cluster_ops.checkpoints.close()
        self.wal.close()
        self.backend.close()

    # ---- proposing ---------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def receive(self, messages: list) -> None:
        """Step messages from peers (peer transport) into raft and wake the node loop."""
        for m in messages:
            try:
                self.node.step(m)
            except RaftError as e:  # unknown peer, dropped forward, ...: raft retries
                log.debug("dropped %s from %x: %s", m.type.name, m.frm, e)
        self._wake.set()

    def next_id(self) -> int:
        return next(self._req_ids)

    async def propose(self, req: InternalRaftRequest) -> object:
        """Replicate ``req`` and return what applying it produced (or raise its error)."""
        if self._stopped:
            raise errors.ErrStopped()
        req.ID = self.next_id()
        data = req.SerializeToString()
        if len(data) > self.cfg.max_request_bytes:
            raise errors.ErrRequestTooLarge()
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiters[req.ID] = fut
        self._proposals.append((req.ID, data))
        self._wake.set()
        # No timer per request: the ticker expires overdue proposals (in order, since
        # every proposal gets the same timeout).
        start = time.monotonic()
        self._deadlines.append((start + self.request_timeout(), start, req.ID))
        try:
            result = await fut
        finally:
            self._waiters.pop(req.ID, None)
        if isinstance(result, errors.EtcdError):
            raise result
        return result

    def _expire_overdue(self, now: float) -> None:
        """Fail proposals and reads past the request timeout (both queues are in order)."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, start, req_id = deadlines.popleft()
            fut = self._waiters.get(req_id)
            if fut is not None and not fut.done():
                self.stats.proposals_failed += 1
                if any(held_id == req_id for held_id, _ in self._held):
                    # never accepted by raft (no leader all along): etcd's Propose
                    # blocks and returns the bare context error, not a parsed timeout
                    fut.set_result(errors.ErrContextDeadlineExceeded())
                else:
                    fut.set_result(self._timeout_error(start))
        reads = self._read_deadlines
        while reads and reads[0][0] <= now:
            read = reads.popleft()[1]
            if not read.done():
                self.stats.slow_read_indexes += 1  # etcd counts its read timeout as slow
                read.set_exception(errors.ErrTimeout())

    def request_timeout(self) -> float:
        """etcd's ReqTimeout: 5 s plus two election timeouts."""
        return 5.0 + 2 * self.cfg.election_timeout_ms / 1000

    def _timeout_error(self, start: float) -> errors.EtcdError:
        """etcd's parseProposeCtxErr: why a proposal made at ``start`` timed out."""
        elected = self.lead_elected_at
        prev_lead_lost = elected - 2 * self.cfg.election_timeout_ms / 1000
        if prev_lead_lost < start < elected:
            return errors.ErrTimeoutDueToLeaderFail()
        lead = self.leader_id
        t = self.transport
        if lead and lead != self.member_id and t is not None and not t.connected_since(lead, start):
            return errors.ErrTimeoutDueToConnectionLost()
        return errors.ErrTimeout()

    async def read_barrier(self) -> None:
        """Wait until this member's state reflects every write acknowledged before now."""
        if self.node.leads_alone():
            return  # a single-voter cluster: acknowledged writes are applied before the ack
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reads_waiting.append(fut)
        self._wake.set()
        self._read_deadlines.append((time.monotonic() + self.request_timeout(), fut))
        await fut  # the ticker fails it with ErrTimeout when overdue

    # ---- the node loop ---------------------------------------------------------------------
    async def _ticker(self) -> None:
        interval = self.cfg.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._expire_overdue(time.monotonic())
            self.node.tick()
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._feed()
                while self.node.has_ready():
                    rd = self.node.ready()
                    await self._handle_ready(rd, loop)
                    self.node.advance(rd)
                    self._feed()
            except Exception:
                log.exception("node loop failed; stopping")
                os._exit(1)  # never continue with a state machine we cannot trust

    def _feed(self) -> None:
        """Hand queued proposals and read requests to raft (outside a Ready cycle)."""
        if self._held and self.leader_id:
            # A leader is known again: propose what waited for one, before newer requests.
            self._proposals, self._held = self._held + self._proposals, []
        if self._proposals:
            props, self._proposals = self._proposals, []
            # the caller gave up (timed out) before it was proposed: drop it
            live = [(req_id, data) for req_id, data in props
                    if (fut := self._waiters.get(req_id)) is not None and not fut.done()]
            if self._held:
                self._held.extend(live)  # keep their order behind the held
            elif live:
                try:
                    self.node.propose_many([data for _, data in live])
                except ProposalDropped:
                    # No leader (election, transfer): like etcd, hold the requests until
                    # a leader appears or the callers' request timeout expires. Never
                    # proposed, so retrying cannot apply them twice.
                    self._held.extend(live)
        if self._reads_waiting:
            # Unique across members: followers forward their contexts to the leader, which
            # keys pending reads by context (a collision would silently drop a read).
            ctx = self.member_id.to_bytes(8, "big") + next(self._read_ctx).to_bytes(8, "big")
            self._reads_inflight[ctx], self._reads_waiting = self._reads_waiting, []
            try:
                self.node.read_index(ctx)
            except ProposalDropped:  # no leader yet: retry on the next wake (tick)
                self._reads_waiting = self._reads_inflight.pop(ctx) + self._reads_waiting

    async def _handle_ready(self, rd: Ready, loop: asyncio.AbstractEventLoop) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.lead, rd.soft_state.raft_state)
        if rd.snapshot is not None:  # state image from the leader, before anything after it
            self.stats.snapshot_apply_in_progress = 1
            try:
                self.cluster_ops.install_snapshot(rd.snapshot)
            finally:
                self.stats.snapshot_apply_in_progress = 0
            failpoint("after-snapshot-install")  # state installed, raft log not yet
        sent = False
        if self.is_leader and rd.messages and self.transport is not None:
            # Raft thesis 10.2.1 (etcd does the same): a leader may replicate while it
            # writes its own disk. Its term and vote were persisted when it campaigned,
            # and raft counts its own entries as matched only after advance().
            self.transport.send(rd.messages)
            sent = True
        persist = None
        if rd.entries or rd.hard_state is not None or rd.snapshot is not None:
            if rd.must_sync:
                # the fsync runs in the I/O thread while we apply what is already committed
                persist = loop.run_in_executor(self._io, self._save_synced, rd.hard_state,
                                               rd.entries, rd.snapshot)
            else:
                try:
                    self.storage.save(rd.hard_state, rd.entries, rd.snapshot, False)
                except Exception as e:  # any failed disk write is fatal
                    fatal_disk_error("raft log write failed", e)
        if rd.committed_entries:
            self._apply(rd.committed_entries)
        if persist is not None:
            try:
                await persist
            except Exception as e:  # any failed disk write is fatal
                fatal_disk_error("raft log write failed", e)
        if rd.messages and self.transport is not None and not sent:
            self.transport.send(rd.messages)
        for rs in rd.read_states:
            waiters = self._reads_inflight.pop(rs.request_ctx, None)
            if waiters and not all(w.done() for w in waiters):
                self._reads_ready.append((rs.index, waiters))
            else:  # an answer to a round whose reads timed out or were sent again
                self.stats.slow_read_indexes += 1
        self._release_reads()

    def _save_synced(self, hard_state: HardState | None, entries: tuple, snapshot: object) -> None:
        """In the raft I/O thread: write and fsync the raft log, timed (etcd's wal fsync)."""
        t0 = time.perf_counter()
        self.storage.save(hard_state, entries, snapshot, True)  # type: ignore[arg-type]
        self.stats.wal_fsync.observe(time.perf_counter() - t0)

    @property
    def pending_proposals(self) -> int:
        return len(self._waiters)

    def _apply(self, entries: tuple) -> None:
        t0 = time.perf_counter()
        wb, out = self.applier.begin()
        last = entries[-1]
        for e in entries:
            if e.type == EntryType.EntryConfChange:
                self.cluster_ops.apply_conf_change(e, wb, out)
                continue
            if e.data:
                self.applier.apply_request(e.data, wb, out, e.index)
        t1 = time.perf_counter()
        try:
            self.applier.finish(wb, out, last.index, last.term)
        except Exception as e:  # any failed disk write is fatal
            fatal_disk_error("state db write failed", e)
        t2 = time.perf_counter()
        self.stats.backend_commit.observe(t2 - t1)
        if t2 - t0 > SLOW_APPLY_S:
            self.stats.slow_applies += 1
        for req_id, result in out.results:
            fut = self._waiters.get(req_id)
            if fut is not None and not fut.done():
                fut.set_result(result)
        self._maybe_compact_log()

    def _release_reads(self) -> None:
        applied = self.applier.applied_index
        while self._reads_ready and self._reads_ready[0][0] <= applied:
            _, waiters = self._reads_ready.popleft()
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _maybe_compact_log(self) -> None:
        applied = self.applier.applied_index
        if self.cluster_ops.checkpoints.busy:
            return  # etcd too: the entries after a snapshot in flight must stay in the log
        if applied - self.storage.snap_meta.index > self.cfg.snapshot_count:
            keep_from = max(applied - self.cfg.snapshot_catchup_entries, 1)
            # Power loss: the state db is never fsynced per apply (it is replayed from the
            # log), so make it durable before dropping the entries that could replay it
            # (etcd commits its backend before a snapshot for the same reason).
            try:
                self.backend.sync()
            except Exception as e:  # any failed disk write is fatal
                fatal_disk_error("state db sync failed", e)
            self.storage.compact(keep_from, self.storage.conf_state)

    def _on_soft_state(self, lead: int, state: StateType) -> None:
        was_leader = self.is_leader
        if lead and lead != self.leader_id:
            self.lead_elected_at = time.monotonic()
            self.stats.leader_changes += 1
        if lead != self.leader_id and self._reads_inflight:
            self._resend_reads()
        self.leader_id = lead
        self.is_leader = state == StateType.StateLeader
        if self.is_leader and not was_leader:
            log.info("became leader", extra={"term": self.node.term})
            if self.transport is not None:
                self.transport.reset_heartbeats()
            self.lessor.promote(self.cfg.election_timeout_ms / 1000)
        elif was_leader and not self.is_leader:
            log.info("lost leadership", extra={"leader": f"{lead:x}"})
            self.lessor.demote()

    def _resend_reads(self) -> None:
        """The leader changed: rounds asked of the old one may never be answered. etcd
        fails their reads with "leader changed" (counted in read_indexes_failed); here
        they are counted the same way and join the next round, so they are answered by
        the new leader instead of waiting out the request timeout."""
        rounds, self._reads_inflight = self._reads_inflight, {}
        self.stats.read_indexes_failed += len(rounds)
        live = [w for waiters in rounds.values() for w in waiters if not w.done()]
        self._reads_waiting = live + self._reads_waiting
        self._wake.set()

    # ---- leases: expiry and checkpoints, decided by the leader through the log ------------
    async def _lease_loop(self) -> None:
        last_checkpoint = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            if not self.is_leader:
                continue
            now = time.monotonic()
            for lease_id in self.lessor.expired():
                if now - self._revoking.get(lease_id, 0) < 3.0:
                    continue  # a revoke for it is already on its way
                self._revoking[lease_id] = now
                asyncio.get_running_loop().create_task(self._revoke_expired(lease_id))
            if now - last_checkpoint >= self.cfg.lease_checkpoint_interval_s:
                last_checkpoint = now
                due = self.lessor.checkpoints_due()
                if due:
                    req = InternalRaftRequest()
                    for lid, rem in due:
                        req.lease_checkpoint.checkpoints.add(ID=lid, remaining_TTL=rem)
                    asyncio.get_running_loop().create_task(self._quiet(self.propose(req)))

    async def _revoke_expired(self, lease_id: int) -> None:
        self.stats.lease_expired += 1
        req = InternalRaftRequest(lease_revoke=rpc.LeaseRevokeRequest(ID=lease_id))
        await self._quiet(self.propose(req))
        self._revoking.pop(lease_id, None)

    @staticmethod
    async def _quiet(aw: object) -> None:
        try:
            await aw  # type: ignore[misc]
        except errors.EtcdError as e:
            log.debug("background proposal failed: %s", e)

    async def _compaction_loop(self) -> None:
        """Physical compaction: bounded batches between applies (see mvcc.compaction)."""
        try:
            await self.kv.compactions.run()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a failed delete batch is a failed disk write: fatal
            fatal_disk_error("state db write failed (compaction)", e)

    async def _progress_loop(self) -> None:
        """Progress notifications for idle synced watchers that asked for them."""
        interval = self.cfg.watch_progress_notify_interval_s
        while True:
            await asyncio.sleep(interval)
            rev = self.kv.current_rev
            for w in list(self.hub.synced_watchers()):
                if w.progress_notify and not w.sent_since_progress and w.sink.has_room():
                    w.sink.deliver(w, rev, [])
                w.sent_since_progress = False

    # ---- status ------------------------------------------------------------------------
    def header(self, rev: int | None = None) -> rpc.ResponseHeader:
        return rpc.ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id,
                                  revision=self.kv.current_rev if rev is None else rev,
                                  raft_term=self.node.term)

    def status_response(self) -> rpc.StatusResponse:
        """Maintenance.Status's answer (asked by clients, and by peers over the peer port)."""
        st = self.node.status()
        return rpc.StatusResponse(
            header=self.header(), version=VERSION, dbSize=self.backend.size() + self.wal.size(),
            leader=self.leader_id, raftIndex=st.hard_state.commit, raftTerm=st.hard_state.term,
            raftAppliedIndex=self.applier.applied_index, dbSizeInUse=self.backend.size_in_use(),
            errors=[f"memberID:{a.memberID} alarm:{rpc.AlarmType.Name(a.alarm)} "
                    for a in self.alarms.list()],
            isLearner=self.member_id in self.storage.conf_state.learners)

    def hash_kv_response(self, rev: int) -> rpc.HashKVResponse:
        """Maintenance.HashKV's answer; raises etcd's compacted / future revision errors."""
        h, compact_rev, hash_rev = self.kv.hash_kv(rev)
        return rpc.HashKVResponse(header=self.header(), hash=h, compact_revision=compact_rev,
                                  hash_revision=hash_rev)

    def fill(self, h: rpc.ResponseHeader) -> None:
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = self.node.term

    def lease_ttl_local(self, lease_id: int, keys: bool) -> raft_pb.LeaseTimeToLiveResponse:
        """This member's view of a lease (meaningful on the leader, which tracks expiry)."""
        le = self.lessor.lookup(lease_id)
        if le is None:
            return raft_pb.LeaseTimeToLiveResponse(TTL=-1)
        remaining = max(0, math.floor(le.remaining(self.clock.now())))
        resp = raft_pb.LeaseTimeToLiveResponse(TTL=remaining, granted_TTL=le.ttl)
        if keys:
            resp.keys.extend(sorted(le.keys))
        return resp

    def new_lease_id(self) -> int:
        while True:
            lid = secrets.randbits(62) + 1
            if self.lessor.lookup(lid) is None:
                return lid
