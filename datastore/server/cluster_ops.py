"""Membership changes and snapshot catch-up for multi-member clusters.

Membership changes follow etcd (server.go): the API validates a change against the
current members (``may_add/remove/promote`` with the strict reconfig check: a change
must not leave the cluster without a quorum of started members), then proposes a raft
``ConfChange`` whose context is the ``MemberRecord``; every member applies it in log
order (``apply_conf_change``): validate again (deterministic: only the records), tell
raft, persist the new ConfState, update the member records in the same batch as the
applied index, add/remove the peer in the transport, resolve the proposer's waiter with
the member list. A member removed from the cluster stops, as etcd's does.

A member that starts (or whose record lacks its name or client URLs) publishes its
attributes through the log (``InternalRaftRequest.member_attr``), like etcd's publish.

Snapshots: the raft snapshot a leader sends names a checkpoint of its state database
(every column family) at its applied index, which becomes the snapshot's index; its
ConfState is derived from the member records in the image, so image and metadata always
agree. The image travels on a stream of its own (``snapshot_stream``); a follower
installs it crash-safely (``snapshot_image``) and reloads its in-memory indexes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.internalpb.internal_pb2 import InternalRaftRequest, MemberRecord
from datastore.client.connection import CALL_METADATA
from datastore.mvcc.index import TreeIndex
from datastore.raft.confchange import decode_conf_change
from datastore.raft.types import (
    ConfChange,
    ConfChangeType,
    Entry,
    ProposalDropped,
    Snapshot,
    SnapshotMetadata,
    StateType,
)
from datastore.server import codec
from datastore.server.features import ClusterVersion, DowngradeRefused, fatal_downgrade
from datastore.server.membership import META_LOCAL_ID, compute_member_id
from datastore.server.snapshot_image import (
    META_INSTALLED_SNAPSHOT,
    Checkpoints,
    conf_state_of,
    install_image,
)
from datastore.server.tlsutil import open_channel
from datastore.server.transport import fetch_cluster
from datastore.storage.backend import Backend

if TYPE_CHECKING:
    from rocksdict import WriteBatch

    from datastore.auth.store import AuthStore
    from datastore.lease.lessor import Lessor
    from datastore.mvcc.kvstore import KVStore
    from datastore.mvcc.watchable import WatchHub
    from datastore.raft.rawnode import RawNode
    from datastore.server.alarms import AlarmStore
    from datastore.server.applier import Applied, Applier
    from datastore.server.config import Config
    from datastore.server.membership import Membership
    from datastore.server.raftlog import DurableStorage

log = logging.getLogger("datastore.cluster")

MAX_LEARNERS = 1  # etcd's default --experimental-max-learners
LEARNER_READY_PERCENT = 0.9  # etcd: a learner within 90% of the leader's match may be promoted
CONF_CHANGE_TIMEOUT_S = 7.0
HEALTH_INTERVAL_S = 5.0  # etcd's HealthInterval: a peer counts as active once connected this long
REMOVED_PREFIX = b"removed/"  # meta: ids of removed members (etcd's members_removed bucket)


class _Peers(Protocol):
    """What membership changes need from the peer transport (``PeerTransport``)."""

    @property
    def peers(self) -> Mapping[int, object]: ...

    def add_peer(self, peer_id: int, urls: list[str]) -> None: ...

    def update_peer(self, peer_id: int, urls: list[str]) -> None: ...

    def remove_peer(self, peer_id: int) -> None: ...

    def active_since(self, peer_id: int) -> float: ...

    def connected_since(self, peer_id: int, since: float) -> bool: ...


class ClusterHost(Protocol):
    """What membership changes, snapshots and publishing need from the member (not the
    whole EtcdServer). ``_reload`` swaps the state machine after a snapshot install, so
    it reaches into every component that caches state."""

    cfg: Config
    data_dir: Path
    backend: Backend
    storage: DurableStorage
    applier: Applier
    members: Membership
    kv: KVStore
    lessor: Lessor
    alarms: AlarmStore
    auth: AuthStore
    hub: WatchHub
    cluster_version: ClusterVersion
    node: RawNode
    member_id: int
    leader_id: int
    is_leader: bool
    # Proposal bookkeeping a conf change shares with normal proposals.
    _stopped: bool
    _waiters: dict[int, asyncio.Future[object]]

    @property
    def transport(self) -> _Peers | None: ...

    async def propose(self, req: InternalRaftRequest) -> object: ...

    def next_id(self) -> int: ...

    def wake(self) -> None: ...


def installed_snapshot_meta(b: Backend) -> SnapshotMetadata | None:
    from datastore.api.raftpb import raft_pb2

    raw = b.get("meta", META_INSTALLED_SNAPSHOT)
    if not raw:
        return None
    return codec.snapshot_from_pb(raft_pb2.Snapshot.FromString(raw)).metadata


def _member_pb(m: MemberRecord) -> rpc.Member:
    return rpc.Member(ID=m.ID, name=m.name, peerURLs=list(m.peer_urls),
                      clientURLs=list(m.client_urls), isLearner=m.is_learner)


# ---- joining an existing cluster (called from EtcdServer._bootstrap) -----------------------
def join_existing(server: ClusterHost) -> None:
    """--initial-cluster-state existing: learn the cluster from a peer; never bootstrap one."""
    cfg = server.cfg
    cluster = cfg.initial_cluster_map()
    own = sorted(cfg.initial_advertise_peer_urls)
    others = [u for name, urls in cluster.items() if name != cfg.name for u in urls
              if u not in own]
    if not others:
        raise ValueError("--initial-cluster-state existing needs the other members in "
                         "--initial-cluster")
    cluster_id, raw = fetch_cluster(others, tls=cfg.peer_tls)
    records = [MemberRecord.FromString(r) for r in raw]
    local = next((m for m in records if sorted(m.peer_urls) == own), None)
    if local is None:
        raise ValueError(f"no member of the existing cluster has peer URLs {own}: "
                         "add it first (etcdctl member add)")
    server.members.bootstrap(local.ID, cluster_id, records)
    server.storage.set_conf_state(conf_state_of(records))
    log.info("joining existing cluster", extra={"cluster_id": f"{cluster_id:x}",
                                                "member_id": f"{local.ID:x}"})


class ClusterOps:
    def __init__(self, server: ClusterHost) -> None:
        self.s = server
        self.removed = False
        self.checkpoints = Checkpoints(server.backend, server.data_dir, server.wake)
        self._tasks: list[asyncio.Task[None]] = []
        self.removed_ids: set[int] = set()
        self._load_removed()
        server.storage.snapshot_source = self.make_snapshot
        server.applier.register("member_attr", self._apply_member_attr)

    def _load_removed(self) -> None:
        self.removed_ids = {int.from_bytes(k[len(REMOVED_PREFIX):], "big") for k, _ in
                            self.s.backend.scan("meta", REMOVED_PREFIX, b"removed0")}

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._publish()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _publish(self) -> None:
        """Publish this member's name and client URLs through the log (etcd: on every start)."""
        s = self.s
        cfg = s.cfg
        while not self.removed and s.member_id in s.members.members:
            if s.leader_id:
                rec = MemberRecord(ID=s.member_id, name=cfg.name,
                                   client_urls=list(cfg.advertise_client_urls))
                try:
                    await s.propose(InternalRaftRequest(member_attr=rec))
                    log.info("published member attributes", extra={"name": cfg.name})
                    return
                except errors.EtcdError as e:
                    log.debug("publish failed: %s", e)
            await asyncio.sleep(0.2)  # retry interval until a leader commits it

    # ---- apply side (inside EtcdServer._apply) ------------------------------------------
    def _apply_member_attr(self, rec: MemberRecord, wb: WriteBatch, out: Applied) -> object:
        m = self.s.members.members.get(rec.ID)
        if m is None:
            return errors.ErrMemberNotFound()
        m2 = MemberRecord()
        m2.CopyFrom(m)
        m2.name = rec.name
        del m2.client_urls[:]
        m2.client_urls.extend(rec.client_urls)
        self.s.members.put(m2, wb)
        return rpc.MemberUpdateResponse()

    def _validate(self, cc: ConfChange, rec: MemberRecord | None) -> errors.EtcdError | None:
        members = self.s.members.members
        if cc.type in (ConfChangeType.ConfChangeAddNode, ConfChangeType.ConfChangeAddLearnerNode):
            cur = members.get(cc.node_id)
            if cur is not None:
                if cc.type == ConfChangeType.ConfChangeAddNode and cur.is_learner:
                    return None  # promotion
                return errors.ErrMemberExist()
            if rec is not None:
                urls = set(rec.peer_urls)
                if any(urls & set(m.peer_urls) for m in members.values()):
                    return errors.ErrPeerURLExist()
            return None
        if cc.type == ConfChangeType.ConfChangeRemoveNode:
            return None if cc.node_id in members else errors.ErrMemberNotFound()
        if cc.node_id in self.removed_ids:
            return errors.ErrMemberExist()  # etcd: ErrIDRemoved, never re-added
        if cc.type == ConfChangeType.ConfChangeUpdateNode:
            if cc.node_id not in members:
                return errors.ErrMemberNotFound()
            if rec is not None:
                urls = set(rec.peer_urls)
                if any(urls & set(m.peer_urls) for m in members.values() if cc.node_id != m.ID):
                    return errors.ErrPeerURLExist()
        return None

    def apply_conf_change(self, e: Entry, wb: WriteBatch, out: Applied) -> None:
        s = self.s
        cc = decode_conf_change(e.data)
        rec = MemberRecord.FromString(cc.context) if cc.context else None
        err = self._validate(cc, rec)
        if err is not None:
            if cc.id:
                out.results.append((cc.id, err))
            return
        cs = s.node.apply_conf_change(cc)
        # The WAL's ConfState first (synced): a crash before the apply batch lands replays
        # this entry, and re-applying a conf change raft already has is a no-op.
        s.storage.set_conf_state(cs)
        members = s.members
        t = s.transport
        if cc.type in (ConfChangeType.ConfChangeAddNode, ConfChangeType.ConfChangeAddLearnerNode):
            cur = members.members.get(cc.node_id)
            if cur is not None:  # promotion of a learner
                m = MemberRecord()
                m.CopyFrom(cur)
                m.is_learner = False
            else:
                m = rec if rec is not None else MemberRecord(ID=cc.node_id)
            members.put(m, wb)
            if t is not None:
                t.add_peer(m.ID, list(m.peer_urls))
        elif cc.type == ConfChangeType.ConfChangeRemoveNode:
            members.remove(cc.node_id, wb)
            self.removed_ids.add(cc.node_id)
            wb.put(REMOVED_PREFIX + cc.node_id.to_bytes(8, "big"), b"", s.backend.handle("meta"))
            if cc.node_id == s.member_id:
                self._removed()
            elif t is not None:
                t.remove_peer(cc.node_id)
        elif cc.type == ConfChangeType.ConfChangeUpdateNode:
            cur = members.members[cc.node_id]
            m = MemberRecord()
            m.CopyFrom(cur)
            if rec is not None:
                del m.peer_urls[:]
                m.peer_urls.extend(rec.peer_urls)
            members.put(m, wb)
            if t is not None:
                t.update_peer(m.ID, list(m.peer_urls))
        if cc.id:
            out.results.append((cc.id, [_member_pb(m) for m in
                                        sorted(members.members.values(), key=lambda m: m.ID)]))

    def removed_by_peer(self) -> None:
        """A peer told us we were removed (we may never see the entry's commit)."""
        self._removed()

    def _removed(self) -> None:
        """etcd: a member removed from the cluster stops (its process exits)."""
        if self.removed:
            return
        self.removed = True
        log.warning("this member was removed from the cluster; shutting down")
        loop = asyncio.get_running_loop()
        # A moment for the leader to hear our last acknowledgements, then a normal shutdown.
        loop.call_later(1.0, os.kill, os.getpid(), signal.SIGTERM)

    # ---- snapshots -------------------------------------------------------------------
    def make_snapshot(self) -> Snapshot:
        """The raft snapshot a leader sends: a checkpoint of its state at its applied index
        (SnapshotTemporarilyUnavailable while one is being made, off the event loop)."""
        return self.checkpoints.snapshot(self.s.storage.first_index())

    def install_snapshot(self, snap: Snapshot) -> None:
        """Replace the state machine with the received image (follower, in the node loop)."""
        s = self.s
        if not snap.data:
            return
        t0 = time.monotonic()
        local = s.backend.get("meta", META_LOCAL_ID) or b""
        install_image(s.backend, s.data_dir, snap.data.decode(), snap.metadata, local)
        t1 = time.monotonic()
        self._reload(snap.metadata.index)  # rebuilds the key index: the long part
        log.info("installed a snapshot from the leader",
                 extra={"index": snap.metadata.index, "image_seconds": round(t1 - t0, 3),
                        "seconds": round(time.monotonic() - t0, 3)})

    def _reload(self, applied: int) -> None:
        s = self.s
        kv = s.kv
        kv.index = TreeIndex()
        kv._overlay.clear()
        s.lessor.leases.clear()
        s.lessor.restore()
        if s.lessor.primary:
            s.lessor.promote()
        s.lessor.attach_restored((x.lease, x.key) for x in kv.restore())
        members = s.members
        members.members = {}
        for _, raw in s.backend.scan("members", b""):
            m = MemberRecord.FromString(raw)
            members.members[m.ID] = m
        s.alarms._alarms.clear()
        for k, _ in s.backend.scan("meta", b"alarm/", b"alarm/\xff"):
            s.alarms._alarms.add((int.from_bytes(k[6:14], "big"), k[14]))
        s.applier.applied_index = applied
        s.auth.load()  # users, roles, enabled flag and revision came with the image
        s.cluster_version.load()  # so did the agreed cluster version
        try:
            s.cluster_version.check_local("in a snapshot from the leader")
        except DowngradeRefused as e:
            fatal_downgrade(e)
        self._load_removed()
        hub = s.hub
        for w in list(hub.synced_watchers()):  # they missed events: replay from disk
            hub._remove_synced(w)
            hub.unsynced.add(w)
        hub._wake.set()
        t = s.transport
        if t is not None:
            for pid in list(t.peers):
                if pid not in members.members:
                    t.remove_peer(pid)
            for m in members.members.values():
                t.add_peer(m.ID, list(m.peer_urls))
        if s.member_id not in members.members:
            self._removed()

    # ---- proposing (API side) --------------------------------------------------------
    async def _propose(self, cc: ConfChange) -> list[rpc.Member]:
        s = self.s
        if s._stopped or self.removed:
            raise errors.ErrStopped()
        cc = ConfChange(cc.type, cc.node_id, cc.context, s.next_id())
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        s._waiters[cc.id] = fut
        try:
            try:
                s.node.propose_conf_change(cc)
            except ProposalDropped:
                raise errors.ErrNoLeader() from None
            s.wake()
            try:
                result = await asyncio.wait_for(fut, CONF_CHANGE_TIMEOUT_S)
            except TimeoutError:
                raise errors.ErrTimeout() from None
        finally:
            s._waiters.pop(cc.id, None)
        if isinstance(result, errors.EtcdError):
            raise result
        return result  # type: ignore[return-value]

    def _voters(self) -> list[int]:
        return [m.ID for m in self.s.members.members.values() if not m.is_learner]

    def health_interval(self) -> float:
        """How long a peer must have been connected to count as active.

        etcd uses a fixed 5 s (HealthInterval). Here it is one election timeout (capped at
        5 s): long enough that a just-reconnected peer has exchanged a round of heartbeats
        and appends, short enough that a cluster reconfigured right after it formed (as
        tests and scripts do) is not refused.
        """
        return min(HEALTH_INTERVAL_S, self.s.cfg.election_timeout_ms / 1000)

    def _connected_since(self, ids: list[int], since: float) -> int:
        """etcd's numConnectedSince: ourselves plus peers connected without a break since."""
        s = self.s
        t = s.transport
        return sum(1 for i in ids
                   if i == s.member_id or (t is not None and t.connected_since(i, since)))

    def _n_started(self, ids: list[int]) -> int:
        """etcd's IsStarted: a member that published its name."""
        members = self.s.members.members
        return sum(1 for i in ids if i in members and members[i].name)

    def _may_add_voter(self) -> None:
        """etcd's mayAddMember for a voting member (strict reconfig check)."""
        voters = self._voters()
        started = self._n_started(voters)
        # IsReadyToAddVotingMember (a lone started member may always add a second one)
        if started < (len(voters) + 1) // 2 + 1 and not (started == 1 and len(voters) == 1):
            raise errors.ErrMemberNotEnoughStarted()
        since = time.monotonic() - self.health_interval()
        if self._connected_since(voters, since) < len(voters):
            # not connected to every voter for a health interval: a new voter could
            # leave the cluster without an active quorum
            raise errors.ErrUnhealthy()
        # etcd checks connectivity for learners too; a learner never changes the quorum,
        # so adding one is allowed here while a peer is down or reconnecting.

    def _may_remove_voter(self, mid: int) -> None:
        """etcd's mayRemoveMember for a voting member (strict reconfig check)."""
        s = self.s
        voters = self._voters()
        remaining = [v for v in voters if v != mid]
        if self._n_started(remaining) < len(remaining) // 2 + 1:
            raise errors.ErrMemberNotEnoughStarted()  # IsReadyToRemoveVotingMember
        t = s.transport
        if mid != s.member_id and (t is None or t.active_since(mid) == 0):
            return  # a member that is down is not part of the active quorum
        active = self._connected_since(voters, time.monotonic() - self.health_interval())
        if active - 1 < 1 + (len(voters) - 1) // 2:
            raise errors.ErrUnhealthy()  # removing it would break the active quorum

    def _require_leader(self) -> None:
        if not self.s.leader_id:
            raise errors.ErrNoLeader()

    async def add_member(self, peer_urls: list[str], is_learner: bool) -> tuple[rpc.Member, list[rpc.Member]]:
        s = self.s
        self._require_leader()
        members = list(s.members.members.values())
        urls = set(peer_urls)
        if any(urls & set(m.peer_urls) for m in members):
            raise errors.ErrPeerURLExist()
        if is_learner:
            if sum(1 for m in members if m.is_learner) >= MAX_LEARNERS:
                raise errors.ErrTooManyLearners()
        elif s.cfg.strict_reconfig_check:
            self._may_add_voter()
        mid = compute_member_id(list(peer_urls), str(int(time.time())))
        while mid in s.members.members:
            mid = (mid + 1) & 0xFFFFFFFFFFFFFFFF or 1
        rec = MemberRecord(ID=mid, peer_urls=list(peer_urls), is_learner=is_learner)
        typ = (ConfChangeType.ConfChangeAddLearnerNode if is_learner
               else ConfChangeType.ConfChangeAddNode)
        out = await self._propose(ConfChange(typ, mid, rec.SerializeToString()))
        return _member_pb(rec), out

    async def remove_member(self, mid: int) -> list[rpc.Member]:
        s = self.s
        self._require_leader()
        m = s.members.members.get(mid)
        if m is None:
            raise errors.ErrMemberNotFound()
        if s.cfg.strict_reconfig_check and not m.is_learner:
            self._may_remove_voter(mid)
        return await self._propose(ConfChange(ConfChangeType.ConfChangeRemoveNode, mid))

    async def update_member(self, mid: int, peer_urls: list[str]) -> list[rpc.Member]:
        s = self.s
        self._require_leader()
        if mid not in s.members.members:
            raise errors.ErrMemberNotFound()
        urls = set(peer_urls)
        if any(urls & set(m.peer_urls) for m in s.members.members.values() if mid != m.ID):
            raise errors.ErrPeerURLExist()
        rec = MemberRecord(ID=mid, peer_urls=list(peer_urls))
        return await self._propose(ConfChange(ConfChangeType.ConfChangeUpdateNode, mid,
                                              rec.SerializeToString()))

    async def promote_member(self, mid: int) -> list[rpc.Member]:
        s = self.s
        self._require_leader()
        m = s.members.members.get(mid)
        if m is None:
            raise errors.ErrMemberNotFound()
        if not m.is_learner:
            raise errors.ErrMemberNotLearner()
        if not s.is_leader:
            return await self._forward_promote(mid)
        st = s.node.status()
        if st.raft_state != StateType.StateLeader:
            raise errors.ErrNotLeader()
        leader_match = st.progress[s.member_id].match if s.member_id in st.progress else 0
        pr = st.progress.get(mid)
        if pr is None or pr.match < leader_match * LEARNER_READY_PERCENT:
            raise errors.ErrLearnerNotReady()
        if s.cfg.strict_reconfig_check:
            # etcd's IsReadyToPromoteMember: the learner counts as started
            voters = self._voters()
            if 1 + self._n_started(voters) < (len(voters) + 1) // 2 + 1:
                raise errors.ErrMemberNotEnoughStarted()
        return await self._propose(ConfChange(ConfChangeType.ConfChangeAddNode, mid))

    async def _forward_promote(self, mid: int) -> list[rpc.Member]:
        """Only the leader knows how far a learner is; ask it (etcd forwards over the peer URL)."""
        s = self.s
        lead = s.members.members.get(s.leader_id)
        if lead is None or not lead.client_urls:
            raise errors.ErrNoLeader()
        # over the leader's client URL, with our client TLS settings when it is https
        async with await open_channel(lead.client_urls[0], s.cfg.client_tls) as ch:
            try:
                # with the caller's token (etcd 3.5.28 fixed a promote from a follower
                # failing under auth for want of it)
                resp = await rpc_pb2_grpc.ClusterStub(ch).MemberPromote(
                    rpc.MemberPromoteRequest(ID=mid), timeout=CONF_CHANGE_TIMEOUT_S,
                    metadata=CALL_METADATA.get() or None)
            except grpc.aio.AioRpcError as e:
                for cls in (errors.ErrLearnerNotReady, errors.ErrMemberNotLearner,
                            errors.ErrMemberNotFound, errors.ErrMemberNotEnoughStarted,
                            errors.ErrUnhealthy,
                            errors.ErrNoLeader, errors.ErrNotLeader):
                    if e.details() == cls.message:
                        raise cls() from None
                raise errors.ErrTimeout() from None
        return list(resp.members)

    # ---- leadership --------------------------------------------------------------------
    async def move_leader(self, target: int, within: float = CONF_CHANGE_TIMEOUT_S) -> None:
        s = self.s
        if not s.is_leader:
            raise errors.ErrNotLeader()
        if target == s.member_id:
            return
        m = s.members.members.get(target)
        if m is None or m.is_learner:
            raise errors.ErrBadLeaderTransferee()
        s.node.transfer_leader(target)
        s.wake()
        deadline = time.monotonic() + within
        while s.leader_id != target:
            if time.monotonic() > deadline:
                raise errors.ErrTimeoutLeaderTransfer()
            await asyncio.sleep(0.02)  # poll the soft state the node loop updates


def member_list(server: ClusterHost) -> list[rpc.Member]:
    return server.members.to_pb()

