"""etcdserverpb.Maintenance: status, alarms, defragment, hashes, snapshots."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.internalpb.internal_pb2 import InternalRaftRequest
from datastore.api.status import abort, respond
from datastore.auth.grpcctx import require_admin, require_auth_info
from datastore.mvcc.kvstore import crc32c
from datastore.server.etcdserver import EtcdServer
from datastore.snapshot.etcd_export import export_checkpoint

SNAPSHOT_CHUNK = 32 * 1024


def write_etcd_snapshot(server: EtcdServer, dest: Path) -> int:
    """A consistent checkpoint of the state, written to ``dest`` as an etcd bbolt db (its
    size). Pages go to the file as they are made: memory stays flat for any store size."""
    with tempfile.TemporaryDirectory(dir=server.data_dir) as tmp:
        cp = Path(tmp) / "state"
        server.backend.checkpoint(cp)
        with dest.open("wb") as f:
            return export_checkpoint(cp, f)


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def Status(self, r: rpc.StatusRequest, ctx: grpc.aio.ServicerContext) -> rpc.StatusResponse:
        await self._authenticated(ctx)
        return self.s.status_response()

    async def Alarm(self, r: rpc.AlarmRequest, ctx: grpc.aio.ServicerContext) -> rpc.AlarmResponse:
        if r.action == rpc.AlarmRequest.GET:
            await self._authenticated(ctx)  # listing alarms: any user (etcd 3.5.29+)
        else:
            await self._admin(ctx)
        # etcd 3.4 panics on an unknown action and stores an alarm type it does not know
        # (which then breaks Status and /health): refuse both before anything is written.
        if r.action not in (rpc.AlarmRequest.GET, rpc.AlarmRequest.ACTIVATE,
                            rpc.AlarmRequest.DEACTIVATE):
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"etcdserver: unknown alarm action {r.action} (use GET, ACTIVATE "
                            f"or DEACTIVATE)")
        if r.action == rpc.AlarmRequest.ACTIVATE and r.alarm not in (rpc.NOSPACE, rpc.CORRUPT):
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"etcdserver: unknown alarm type {r.alarm} (NOSPACE or CORRUPT)")
        if r.action == rpc.AlarmRequest.GET:
            resp = rpc.AlarmResponse(header=self.s.header())
            resp.alarms.extend(a for a in self.s.alarms.list()
                               if r.alarm in (rpc.NONE, a.alarm) and r.memberID in (0, a.memberID))
            return resp
        return await respond(ctx, self.s, self.s.propose(InternalRaftRequest(alarm=r)))

    async def Defragment(self, r: rpc.DefragmentRequest,
                         ctx: grpc.aio.ServicerContext) -> rpc.DefragmentResponse:
        await self._admin(ctx)
        stats = self.s.stats
        stats.defrag_inflight = 1
        t0 = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.s.backend.defragment)
        finally:
            stats.defrag_inflight = 0
        stats.defrag.observe(time.perf_counter() - t0)
        return rpc.DefragmentResponse()  # etcd's carries no header

    async def _authenticated(self, ctx: grpc.aio.ServicerContext) -> None:
        try:
            await require_auth_info(self.s, ctx)
        except errors.EtcdError as e:
            await abort(ctx, e)

    async def _admin(self, ctx: grpc.aio.ServicerContext) -> None:
        """etcd's authMaintenanceServer: these calls are root's when auth is enabled."""
        try:
            await require_admin(self.s, ctx)
        except errors.EtcdError as e:
            await abort(ctx, e)

    async def Hash(self, r: rpc.HashRequest, ctx: grpc.aio.ServicerContext) -> rpc.HashResponse:
        await self._admin(ctx)
        h = 0
        for cf in ("key", "lease", "members"):
            for k, v in self.s.backend.scan(cf, b""):
                h = crc32c(v, crc32c(k, h))
        return rpc.HashResponse(header=self.s.header(), hash=h)

    async def HashKV(self, r: rpc.HashKVRequest, ctx: grpc.aio.ServicerContext) -> rpc.HashKVResponse:
        await self._admin(ctx)
        try:
            return self.s.hash_kv_response(r.revision)
        except errors.EtcdError as e:
            await abort(ctx, e)

    async def Snapshot(self, r: rpc.SnapshotRequest,
                       ctx: grpc.aio.ServicerContext) -> AsyncIterator[rpc.SnapshotResponse]:
        # Like etcd: its bbolt database followed by the SHA-256 of it, so restore can verify it.
        await self._admin(ctx)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.s.data_dir) as tmp:
            path = Path(tmp) / "snapshot.db"
            header = self.s.header()
            total = await asyncio.get_running_loop().run_in_executor(
                None, write_etcd_snapshot, self.s, path)
            sha = hashlib.sha256()
            sent = 0
            with path.open("rb") as f:
                while chunk := f.read(SNAPSHOT_CHUNK):
                    sha.update(chunk)
                    sent += len(chunk)
                    yield rpc.SnapshotResponse(header=header, remaining_bytes=total - sent + 32,
                                               blob=chunk)
            yield rpc.SnapshotResponse(header=header, remaining_bytes=0, blob=sha.digest())
        self.s.stats.snapshot.observe(time.perf_counter() - t0)  # etcd: the whole transfer

    async def MoveLeader(self, r: rpc.MoveLeaderRequest,
                         ctx: grpc.aio.ServicerContext) -> rpc.MoveLeaderResponse:
        await self._admin(ctx)
        try:
            await self.s.cluster_ops.move_leader(r.targetID)
        except errors.EtcdError as e:
            await abort(ctx, e)
        return rpc.MoveLeaderResponse(header=self.s.header())

    async def Downgrade(self, r: rpc.DowngradeRequest,
                        ctx: grpc.aio.ServicerContext) -> rpc.DowngradeResponse:
        await self._admin(ctx)
        await abort(ctx, errors.ErrNotCapable())
