"""Peer transport: raft messages between members over gRPC (raftpb.RaftTransport).

Inbound, the member listens on its ``--listen-peer-urls``; every ``MessageBatch`` of a
``Send`` stream is stepped into the local raft node (``EtcdServer.receive``). Batches for
another cluster id are ignored. Outbound, one task per peer drains a bounded queue and
writes everything queued as ONE ``MessageBatch`` per write on a long-lived client stream;
it reconnects with exponential backoff. A full queue drops the message and reports the
peer unreachable (etcd's ``ReportUnreachable``). A ``MsgSnap`` leaves the batch stream: its
state image goes on a ``SendSnapshot`` call of its own (``snapshot_stream``), whose outcome
is reported with ``report_snapshot``. The server hands messages over only after the Ready
that produced them was persisted, except a leader's, which replicate while its own fsync
runs (raft thesis 10.2.1).

Besides ``Send`` the service answers ``Members`` (a joining member learns the cluster
from a peer, like etcd's ``GetClusterFromRemotePeers``), ``LeaseRenew`` and
``LeaseTimeToLive`` (a follower forwards keep-alives and TTL queries to the leader, like
etcd's ``/leases`` and ``/leases/internal`` peer handlers: only the leader's lessor
tracks expiry).

For ``/metrics`` it counts, per peer, the bytes of the batches written and read (etcd's
``peer_sent_bytes_total{To}`` / ``peer_received_bytes_total{From}``), the messages it
could not send (``peer_sent_failures_total{To}``) and broken streams; a prober times a
``Members`` call on each peer's channel every ``RTT_PROBE_S`` (etcd's prober, observed
into ``peer_round_trip_time_seconds{To}``); and, like etcd's timeout detector, a leader's
heartbeat to a peer more than two heartbeat intervals after the last one counts as a
``heartbeat_send_failures_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

import grpc

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.raftpb import raft_pb2 as pb
from datastore.api.raftpb import raft_pb2_grpc
from datastore.metrics.hist import Histogram, exponential_buckets
from datastore.raft.types import Message, MsgType
from datastore.server import codec
from datastore.server.coalesce import coalesce
from datastore.server.crl import CheckedRegistrar, RevocationList
from datastore.server.features import format_level, release
from datastore.server.snapshot_stream import SnapshotStats, receive_snapshot, send_snapshot
from datastore.server.tlsutil import TLSInfo, is_secure, open_channel, open_channel_sync

if TYPE_CHECKING:
    from pathlib import Path

    from datastore.lease.lessor import Lessor
    from datastore.raft.rawnode import RawNode
    from datastore.server.config import Config
    from datastore.server.features import ClusterVersion
    from datastore.server.membership import Membership
    from datastore.server.snapshot_image import Checkpoints
    from datastore.server.stats import ServerStats

log = logging.getLogger("datastore.transport")

QUEUE_SIZE = 4096
MAX_MESSAGE = 2**31 - 1
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
PROBE_INTERVAL_S = 0.5
RTT_PROBE_S = 4.0  # etcd's proberInterval (ConnReadTimeout - 1 s)
RTT_BUCKETS = exponential_buckets(0.0001, 2, 16)
# A peer that cannot receive streamed snapshots (a release before 0.13) is asked again
# after this long, or as soon as it reports a release (it was upgraded); meanwhile
# one warning per interval says why it stays behind, instead of a transfer per retry.
SNAPSHOT_UNSUPPORTED_RETRY_S = 30.0
# The detail of the FAILED_PRECONDITION a removed member's stream gets (etcd: 410 Gone).
ERR_REMOVED = "the member has been permanently removed from the cluster"
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class _RemovedMembers(Protocol):
    """What the transport needs from ``ClusterOps``."""

    removed_ids: set[int]
    checkpoints: Checkpoints

    def removed_by_peer(self) -> None: ...


class PeerHost(Protocol):
    """What the transport needs from the member (not the whole EtcdServer)."""

    cfg: Config
    data_dir: Path
    cluster_id: int
    member_id: int
    leader_id: int
    is_leader: bool
    members: Membership
    cluster_version: ClusterVersion
    node: RawNode
    lessor: Lessor
    stats: ServerStats

    @property
    def cluster_ops(self) -> _RemovedMembers: ...

    def receive(self, messages: list[Message]) -> None: ...

    def wake(self) -> None: ...

    async def read_barrier(self) -> None: ...

    def lease_ttl_local(self, lease_id: int, keys: bool) -> pb.LeaseTimeToLiveResponse: ...

    def status_response(self) -> rpc.StatusResponse: ...

    def hash_kv_response(self, rev: int) -> rpc.HashKVResponse: ...


def peer_target(url: str) -> str:
    p = urlparse(url)
    if p.scheme not in ("http", "https") or not p.netloc:
        raise ValueError(f"unsupported peer URL {url!r}: use http://HOST:PORT or https://HOST:PORT")
    return p.netloc


async def open_peer_channel(url: str, tls: TLSInfo) -> grpc.aio.Channel:
    peer_target(url)  # validate
    return await open_channel(url, tls, GRPC_OPTIONS)


class _Peer:
    """One outbound stream to a peer: a bounded queue drained by one task."""

    def __init__(self, t: PeerTransport, peer_id: int, urls: list[str]) -> None:
        self.t = t
        self.id = peer_id
        self.urls = list(urls)
        # None is the idle probe (_probe_if_idle): no timer per wait, one per interval
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue(QUEUE_SIZE)
        self.last_write = 0.0
        self._probe_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.snap_task: asyncio.Task[None] | None = None  # the snapshot being streamed
        self.active_since = 0.0  # monotonic time of the current healthy stream, 0 if down
        self.channel: grpc.aio.Channel | None = None  # the stream's, which the prober shares
        self.probe_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        if self.probe_task is None:
            self.probe_task = asyncio.get_running_loop().create_task(self._probe_rtt())

    def tasks(self) -> tuple[asyncio.Task[None] | None, ...]:
        return self.task, self.snap_task, self.probe_task

    async def _probe_rtt(self) -> None:
        """etcd's peer prober: time a small round trip on the peer's channel."""
        rtt = self.t.rtt.setdefault(self.id, Histogram(RTT_BUCKETS))
        while True:
            ch = self.channel
            if ch is None:
                await asyncio.sleep(PROBE_INTERVAL_S)  # polling for a stream, not a sync
                continue
            t0 = time.perf_counter()
            try:
                await raft_pb2_grpc.RaftTransportStub(ch).Members(pb.MembersRequest(),
                                                                  timeout=RTT_PROBE_S)
                rtt.observe(time.perf_counter() - t0)
            except Exception as e:  # a failed probe has no round trip time (etcd too)
                log.debug("probe of peer %x failed: %s", self.id, e)
            await asyncio.sleep(RTT_PROBE_S)

    async def stop(self) -> None:
        for task in self.tasks():
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _start_snapshot(self, m: Message) -> None:
        if self.t.snapshot_refused(self.id):
            self.t.report_snapshot(self.id, False)  # raft asks again; we answer the same
            return
        if self.snap_task is not None and not self.snap_task.done():
            # raft sends one at a time; a repeat (progress reset) waits for the running one
            log.debug("snapshot to %x already in flight", self.id)
            return
        self.snap_task = asyncio.get_running_loop().create_task(
            send_snapshot(self.t, self.id, self.urls[0], m))

    def enqueue(self, m: Message) -> None:
        try:
            self.queue.put_nowait(m)
        except asyncio.QueueFull:
            self.t.report_failure(self.id, [m])

    def _take_all(self, first: Message) -> list[Message]:
        msgs = [first]
        while True:
            try:
                m = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return msgs
            if m is not None:
                msgs.append(m)

    def _probe_if_idle(self) -> asyncio.TimerHandle:
        """Every PROBE_INTERVAL_S: an empty batch if nothing was written meanwhile."""
        if time.monotonic() - self.last_write >= PROBE_INTERVAL_S and self.queue.empty():
            self.queue.put_nowait(None)
        return asyncio.get_running_loop().call_later(PROBE_INTERVAL_S, self._rearm_probe)

    def _rearm_probe(self) -> None:
        self._probe_timer = self._probe_if_idle()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        i = 0
        while True:
            url = self.urls[i % len(self.urls)]
            i += 1
            channel: grpc.aio.Channel | None = None
            call = None
            pending: list[Message] = []
            try:
                channel = await open_peer_channel(url, self.t.server.cfg.peer_tls)
                self.channel = channel
                call = raft_pb2_grpc.RaftTransportStub(channel).Send()
                # An empty batch opens the stream at once and, when idle, probes it: the
                # strict reconfig check counts peers with a healthy stream as started.
                await call.write(pb.MessageBatch(cluster_id=self.t.server.cluster_id))
                self.active_since = self.last_write = time.monotonic()
                self._probe_timer = self._probe_if_idle()
                while True:
                    first = await self.queue.get()
                    if first is None:
                        self.last_write = time.monotonic()
                        await call.write(pb.MessageBatch(cluster_id=self.t.server.cluster_id))
                        continue
                    pending = self._take_all(first)
                    for m in pending:
                        if m.type == MsgType.MsgSnap:
                            self._start_snapshot(m)
                    queued = [m for m in pending if m.type != MsgType.MsgSnap]
                    pending = coalesce(queued)
                    if len(pending) < len(queued):
                        sup = self.t.superseded
                        sup[self.id] = sup.get(self.id, 0) + len(queued) - len(pending)
                    if not pending:
                        continue
                    batch = pb.MessageBatch(cluster_id=self.t.server.cluster_id,
                                            messages=[codec.message_to_pb(m) for m in pending])
                    self.last_write = time.monotonic()
                    await call.write(batch)
                    sent = self.t.sent_bytes
                    sent[self.id] = sent.get(self.id, 0) + batch.ByteSize()
                    self.t.count(self.t.sent_batches, self.t.sent_messages, self.id, len(pending))
                    if not self.active_since:
                        self.active_since = time.monotonic()
                    backoff = BACKOFF_MIN_S
                    pending = []
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection refused, reset, peer restarted...
                log.debug("peer %x stream failed: %s", self.id, e)
                with contextlib.suppress(Exception):
                    if call is not None and call.done() and await call.details() == ERR_REMOVED:
                        self.t.server.cluster_ops.removed_by_peer()
            finally:
                if self._probe_timer is not None:
                    self._probe_timer.cancel()
                    self._probe_timer = None
                if self.active_since:
                    self.t.disconnects[self.id] = self.t.disconnects.get(self.id, 0) + 1
                self.active_since = 0.0
                self.channel = None
                if pending:
                    self.t.report_failure(self.id, pending)
                if call is not None:
                    call.cancel()
                if channel is not None:
                    await channel.close()
            # Drop what queued up while disconnected: raft retransmits what matters.
            dropped = []
            while not self.queue.empty():
                m = self.queue.get_nowait()
                if m is not None:
                    dropped.append(m)
            if dropped:
                self.t.report_failure(self.id, dropped)
            await asyncio.sleep(backoff)  # reconnect backoff (not test synchronisation)
            backoff = min(backoff * 2, BACKOFF_MAX_S)


class _Service(raft_pb2_grpc.RaftTransportServicer):
    def __init__(self, t: PeerTransport) -> None:
        self.t = t

    async def Send(self, requests: AsyncIterator[pb.MessageBatch],
                   ctx: grpc.aio.ServicerContext) -> pb.SendAck:
        s = self.t.server
        async for batch in requests:
            if batch.cluster_id and s.cluster_id and batch.cluster_id != s.cluster_id:
                continue  # another cluster's traffic (etcd: ErrClusterIDMismatch)
            msgs = [codec.message_from_pb(m) for m in batch.messages]
            if any(m.type == MsgType.MsgSnap for m in msgs):
                # A snapshot's data must name an image received on SendSnapshot; one
                # inline here (an older sender) would make the install fail: drop it.
                log.warning("dropped a snapshot sent inline on the message stream",
                            extra={"frm": f"{msgs[0].frm:x}"})
                msgs = [m for m in msgs if m.type != MsgType.MsgSnap]
            if msgs and msgs[0].frm in s.cluster_ops.removed_ids:
                # etcd answers a removed member with 410 Gone, and it stops
                await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, ERR_REMOVED)
            if msgs:
                frm = msgs[0].frm
                self.t.last_heard[frm] = time.monotonic()
                got = self.t.received_bytes
                got[frm] = got.get(frm, 0) + batch.ByteSize()
                self.t.count(self.t.received_batches, self.t.received_messages, frm, len(msgs))
                s.receive(msgs)
        return pb.SendAck()

    async def SendSnapshot(self, requests: AsyncIterator[pb.SnapshotChunk],
                           ctx: grpc.aio.ServicerContext) -> pb.SnapshotAck:
        return await receive_snapshot(self.t, requests, ctx)

    async def Members(self, r: pb.MembersRequest, ctx: grpc.aio.ServicerContext) -> pb.MembersResponse:
        s = self.t.server
        cv = s.cluster_version.level
        return pb.MembersResponse(cluster_id=s.cluster_id,
                                  members=[m.SerializeToString() for m in s.members.members.values()],
                                  release=release(),
                                  cluster_version=format_level(cv) if cv is not None else "")

    async def LeaseRenew(self, r: pb.LeaseRenewRequest,
                         ctx: grpc.aio.ServicerContext) -> pb.LeaseRenewResponse:
        s = self.t.server
        if not s.is_leader:
            return pb.LeaseRenewResponse(not_leader=True)
        try:
            return pb.LeaseRenewResponse(TTL=s.lessor.renew(r.ID))
        except errors.ErrLeaseNotFound:
            return pb.LeaseRenewResponse(TTL=0)

    async def LeaseTimeToLive(self, r: pb.LeaseTimeToLiveRequest,
                              ctx: grpc.aio.ServicerContext) -> pb.LeaseTimeToLiveResponse:
        s = self.t.server
        if not s.is_leader:
            return pb.LeaseTimeToLiveResponse(not_leader=True)
        try:
            await s.read_barrier()  # etcd: the leader answers after a linearizable read
        except errors.EtcdError:
            return pb.LeaseTimeToLiveResponse(not_leader=True)
        if not s.is_leader:
            return pb.LeaseTimeToLiveResponse(not_leader=True)
        return s.lease_ttl_local(r.ID, r.keys)

    # Members ask each other here (datastore.server.peer_query), with no client auth.
    async def HashKV(self, r: rpc.HashKVRequest, ctx: grpc.aio.ServicerContext) -> rpc.HashKVResponse:
        try:
            return self.t.server.hash_kv_response(r.revision)
        except errors.EtcdError as e:
            await ctx.abort(grpc.StatusCode[e.code], e.message)
            raise AssertionError("unreachable") from None  # ctx.abort always raises

    async def Status(self, r: rpc.StatusRequest, ctx: grpc.aio.ServicerContext) -> rpc.StatusResponse:
        return self.t.server.status_response()


class PeerTransport:
    """Owned by EtcdServer (``server.transport``); lives on the server's event loop."""

    def __init__(self, server: PeerHost) -> None:
        self.server = server
        self.peers: dict[int, _Peer] = {}
        self.last_heard: dict[int, float] = {}
        self.grpc_server: grpc.aio.Server | None = None
        self._renew_channels: dict[str, grpc.aio.Channel] = {}
        # /metrics, by peer id (see the module docstring)
        self.sent_bytes: dict[int, int] = {}
        self.received_bytes: dict[int, int] = {}
        self.sent_failures: dict[int, int] = {}
        self.disconnects: dict[int, int] = {}
        self.rtt: dict[int, Histogram] = {}
        self.snapshots = SnapshotStats()
        self._last_heartbeat: dict[int, float] = {}
        self.no_snapshots_until: dict[int, float] = {}  # peer -> monotonic time
        self._snapshot_warned: dict[int, float] = {}
        # stream writes and the raft messages in them (what batching saves is visible here)
        self.sent_batches: dict[int, int] = {}
        self.sent_messages: dict[int, int] = {}
        self.received_batches: dict[int, int] = {}
        self.received_messages: dict[int, int] = {}
        self.superseded: dict[int, int] = {}  # messages coalesce() left out

    @staticmethod
    def count(batches: dict[int, int], messages: dict[int, int], peer: int, n: int) -> None:
        batches[peer] = batches.get(peer, 0) + 1
        messages[peer] = messages.get(peer, 0) + n

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        srv = grpc.aio.server(options=[*GRPC_OPTIONS, ("grpc.so_reuseport", 0)])
        crl_file = self.server.cfg.peer_tls.crl_file  # --peer-crl-file
        registrar = CheckedRegistrar(srv, RevocationList(crl_file)) if crl_file else srv
        raft_pb2_grpc.add_RaftTransportServicer_to_server(_Service(self), registrar)
        for url in self.server.cfg.listen_peer_urls:
            try:
                if is_secure(url):  # prepare_tls made sure the certificate and key exist
                    srv.add_secure_port(peer_target(url),
                                        self.server.cfg.peer_tls.server_credentials())
                else:
                    srv.add_insecure_port(peer_target(url))
            except RuntimeError:
                if len(self.server.members.members) > 1:
                    raise OSError(f"listen tcp {peer_target(url)}: bind: address already in "
                                  "use or not an address of this host") from None
                # A lone member needs no peer listener until a member is added; do not
                # fail a single-node server over a busy peer port.
                log.warning("cannot listen for peers", extra={"url": url})
        await srv.start()
        self.grpc_server = srv
        for m in self.server.members.members.values():
            if self.server.member_id != m.ID:
                self.add_peer(m.ID, list(m.peer_urls))

    async def stop(self) -> None:
        for p in list(self.peers.values()):
            await p.stop()
        self.peers.clear()
        for ch in self._renew_channels.values():
            await ch.close()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=0.5)

    # ---- membership ------------------------------------------------------------------
    def add_peer(self, peer_id: int, urls: list[str]) -> None:
        if peer_id == self.server.member_id or not urls:
            return
        p = self.peers.get(peer_id)
        if p is not None:
            p.urls = list(urls)
            return
        p = _Peer(self, peer_id, urls)
        self.peers[peer_id] = p
        p.start()

    def update_peer(self, peer_id: int, urls: list[str]) -> None:
        p = self.peers.get(peer_id)
        if p is None:
            self.add_peer(peer_id, urls)
        elif list(urls) != p.urls:
            p.urls = list(urls)
            if p.task is not None:
                p.task.cancel()  # reconnect to the new address
            p.start()

    def remove_peer(self, peer_id: int) -> None:
        p = self.peers.pop(peer_id, None)
        self.last_heard.pop(peer_id, None)
        for counts in (self.sent_bytes, self.received_bytes, self.sent_failures, self.disconnects,
                       self.rtt, self._last_heartbeat, self.no_snapshots_until,
                       self._snapshot_warned, self.sent_batches, self.sent_messages,
                       self.received_batches, self.received_messages, self.superseded):
            counts.pop(peer_id, None)  # type: ignore[attr-defined]
        if p is not None:
            for task in p.tasks():
                if task is not None:
                    task.cancel()

    # ---- outbound --------------------------------------------------------------------
    def send(self, messages: Iterable[Message]) -> None:
        for m in messages:
            p = self.peers.get(m.to)
            if p is not None:
                if m.type == MsgType.MsgHeartbeat:
                    self._heartbeat_sent(m.to)
                p.enqueue(m)

    def _heartbeat_sent(self, to: int) -> None:
        """etcd's timeout detector: a heartbeat later than two intervals after the last."""
        now = time.monotonic()
        last = self._last_heartbeat.get(to)
        self._last_heartbeat[to] = now
        if last is not None and now - last > 2 * self.server.cfg.heartbeat_interval_ms / 1000:
            self.server.stats.heartbeat_send_failures += 1

    def reset_heartbeats(self) -> None:
        """A new term of leadership starts the detector afresh (etcd's td.Reset)."""
        self._last_heartbeat.clear()

    def report_failure(self, peer_id: int, msgs: list[Message]) -> None:
        self.sent_failures[peer_id] = self.sent_failures.get(peer_id, 0) + len(msgs)
        node = self.server.node
        with contextlib.suppress(Exception):
            node.report_unreachable(peer_id)
        for m in msgs:
            if m.type == MsgType.MsgSnap:
                self.report_snapshot(peer_id, False)
        self.server.wake()

    def snapshots_unsupported(self, peer_id: int) -> None:
        """The peer answered SendSnapshot with UNIMPLEMENTED: it runs a release from before
        streamed snapshots, which no leader of this release can bring up to date."""
        self.no_snapshots_until[peer_id] = time.monotonic() + SNAPSHOT_UNSUPPORTED_RETRY_S
        self.snapshot_refused(peer_id)

    def snapshot_refused(self, peer_id: int) -> bool:
        """True while ``peer_id`` cannot take a snapshot; warns once per interval."""
        now = time.monotonic()
        if now >= self.no_snapshots_until.get(peer_id, 0.0):
            return False
        if now - self._snapshot_warned.get(peer_id, -SNAPSHOT_UNSUPPORTED_RETRY_S) \
                >= SNAPSHOT_UNSUPPORTED_RETRY_S:
            self._snapshot_warned[peer_id] = now
            log.warning("cannot send a snapshot: the member runs a release that cannot "
                        "receive streamed snapshots (before 0.13.0); it stays behind until "
                        "it is upgraded", extra={"to": f"{peer_id:x}",
                                                 "retry_in_s": SNAPSHOT_UNSUPPORTED_RETRY_S})
        return True

    def report_snapshot(self, peer_id: int, ok: bool) -> None:
        with contextlib.suppress(Exception):
            self.server.node.report_snapshot(peer_id, ok)
        self.server.wake()

    # ---- health (etcd's ActiveSince / isConnectedSince, for strict reconfig checks) ----
    def active_since(self, peer_id: int) -> float:
        """Monotonic time our stream to the peer became healthy; 0 while it is down."""
        p = self.peers.get(peer_id)
        return p.active_since if p is not None else 0.0

    def connected_since(self, peer_id: int, since: float) -> bool:
        """etcd's isConnectedSince: connected without a break since ``since`` (or before)."""
        t = self.active_since(peer_id)
        return 0 < t <= since

    # ---- lease requests only the leader can answer -----------------------------------
    async def _leader_stub(self) -> raft_pb2_grpc.RaftTransportStub | None:
        s = self.server
        m = s.members.members.get(s.leader_id) if s.leader_id else None
        if m is None or not m.peer_urls or s.leader_id == s.member_id:
            return None
        url = m.peer_urls[0]
        ch = self._renew_channels.get(url)
        if ch is None:
            try:
                ch = await open_peer_channel(url, s.cfg.peer_tls)
            except OSError as e:  # a self-signed peer we could not reach to read its cert
                log.debug("cannot reach leader %x: %s", s.leader_id, e)
                return None
            if url in self._renew_channels:  # another caller made one while we waited
                await ch.close()
                ch = self._renew_channels[url]
            self._renew_channels[url] = ch
        return raft_pb2_grpc.RaftTransportStub(ch)

    async def lease_renew(self, lease_id: int, within: float = 5.0) -> int:
        """Renew on the leader; returns the TTL (0: not found). Raises ErrNoLeader."""
        deadline = time.monotonic() + within
        s = self.server
        while True:
            if s.is_leader:
                try:
                    return s.lessor.renew(lease_id)
                except errors.ErrLeaseNotFound:
                    return 0
            stub = await self._leader_stub()
            if stub is not None:
                try:
                    resp = await stub.LeaseRenew(
                        pb.LeaseRenewRequest(ID=lease_id),
                        timeout=max(0.1, deadline - time.monotonic()))
                    if not resp.not_leader:
                        return resp.TTL
                except grpc.RpcError as e:
                    log.debug("lease renew via %x failed: %s", s.leader_id, e)
            if time.monotonic() > deadline:
                raise errors.ErrNoLeader()
            await asyncio.sleep(0.05)  # wait for a leader to be known again

    async def lease_time_to_live(self, lease_id: int, keys: bool,
                                 within: float) -> pb.LeaseTimeToLiveResponse:
        """Ask the leader for the lease's remaining TTL (etcd's LeaseTimeToLive forward)."""
        deadline = time.monotonic() + within
        s = self.server
        while True:
            if s.is_leader:
                await s.read_barrier()
                if s.is_leader:
                    return s.lease_ttl_local(lease_id, keys)
            stub = await self._leader_stub()
            if stub is not None:
                try:
                    resp = await stub.LeaseTimeToLive(
                        pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys),
                        timeout=max(0.1, deadline - time.monotonic()))
                    if not resp.not_leader:
                        return resp
                except grpc.RpcError as e:
                    log.debug("lease TTL via %x failed: %s", s.leader_id, e)
            if time.monotonic() > deadline:
                raise errors.ErrTimeout() if s.leader_id else errors.ErrNoLeader()
            await asyncio.sleep(0.05)  # wait for a leader to be known again


def fetch_cluster(peer_urls: list[str], timeout: float = 5.0,
                  tls: TLSInfo | None = None) -> tuple[int, list[bytes]]:
    """Blocking: ask existing members (by peer URL) for the cluster id and member records."""
    last: Exception | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for url in peer_urls:
            try:
                peer_target(url)  # validate
                with open_channel_sync(url, tls or TLSInfo(), GRPC_OPTIONS) as ch:
                    resp = raft_pb2_grpc.RaftTransportStub(ch).Members(
                        pb.MembersRequest(), timeout=1.0)
                    if resp.cluster_id:
                        return resp.cluster_id, list(resp.members)
            except (grpc.RpcError, OSError) as e:
                last = e
        time.sleep(0.1)  # start-up retry of a blocking call, before the loop runs
    raise ValueError(f"could not get the cluster membership from {peer_urls}: {last}")
