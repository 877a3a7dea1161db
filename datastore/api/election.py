"""v3electionpb.Election: etcd's election service, a server-side run of the Election recipe.

As in etcd (server/etcdserver/api/v3election) every call is a short-lived session on the
caller's lease, run through the member's client of itself (see datastore/api/lock.py).
Keys follow Go's ``clientv3/concurrency.Election``: a candidate's key is
``<name>/<lease hex>`` and the leader is the key under ``<name>/`` with the oldest create
revision, so ``etcdctl elect`` candidates and observers take part in the same elections.

etcd 3.4 behaviour kept on purpose (e2e/test_lock_election.py checks it against etcd):
- Proclaim with a key that does not hold the leadership fails with ``election: not
  leader``; Resign with such a key succeeds without deleting anything;
- Leader without a leader fails with ``election: no leader``; Observe waits for one;
- a missing ``leader`` field fails with ``"leader" field must be provided``;
- a lease of 0 gets a fresh lease with the 60 s session TTL, never kept alive;
- errors are gRPC UNKNOWN with etcd's message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

import grpc

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.lock import (
    RecipeError,
    SelfClient,
    fail,
    first_create,
    lease_key,
    run_cleanup,
    wait_deletes,
)
from datastore.api.mvccpb import kv_pb2
from datastore.api.v3electionpb import v3election_pb2 as pb
from datastore.api.v3electionpb import v3election_pb2_grpc

if TYPE_CHECKING:
    from datastore.server.etcdserver import EtcdServer

ERR_NOT_LEADER = "election: not leader"
ERR_NO_LEADER = "election: no leader"
ERR_MISSING_LEADER_KEY = '"leader" field must be provided'


def _owns(key: bytes, rev: int) -> rpc.Compare:
    """True while ``key`` is the very key created at ``rev`` (not a re-created one)."""
    return rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                       create_revision=rev)


async def proclaim(c: SelfClient, leader: pb.LeaderKey, value: bytes) -> rpc.ResponseHeader:
    lease = await c.session_lease(leader.lease)
    resp = await c.kv.Txn(rpc.TxnRequest(
        compare=[_owns(leader.key, leader.rev)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=leader.key, value=value,
                                                          lease=lease))]))
    if not resp.succeeded:
        raise RecipeError(ERR_NOT_LEADER)
    return resp.header


async def resign(c: SelfClient, leader: pb.LeaderKey) -> rpc.ResponseHeader:
    await c.session_lease(leader.lease)  # etcd opens a session here too (0: a new lease)
    resp = await c.kv.Txn(rpc.TxnRequest(
        compare=[_owns(leader.key, leader.rev)],
        success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=leader.key))]))
    return resp.header


async def campaign(c: SelfClient, name: bytes, lease: int,
                   value: bytes) -> tuple[rpc.ResponseHeader, pb.LeaderKey]:
    """concurrency.Election.Campaign: join the queue, then wait for every older candidate."""
    lease = await c.session_lease(lease)
    prefix = name + b"/"
    key = lease_key(prefix, lease)
    resp = await c.kv.Txn(rpc.TxnRequest(
        compare=[_owns(key, 0)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))],
        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))]))
    leader = pb.LeaderKey(name=name, key=key, rev=resp.header.revision, lease=lease)
    if not resp.succeeded:
        # Campaigning again on the same lease resumes the existing candidacy.
        kv = resp.responses[0].response_range.kvs[0]
        leader.rev = kv.create_revision
        if kv.value != value:
            try:
                await proclaim(c, leader, value)
            except BaseException:
                await run_cleanup(resign(c, leader))
                raise
    try:
        await wait_deletes(c, prefix, leader.rev - 1)
    except asyncio.CancelledError:
        # The caller gave up (etcd: context cancelled): withdraw the candidacy.
        await run_cleanup(resign(c, leader))
        raise
    return resp.header, leader


async def leader_kv(c: SelfClient, name: bytes) -> rpc.RangeResponse:
    resp = await c.kv.Range(first_create(name + b"/"))
    if not resp.kvs:
        raise RecipeError(ERR_NO_LEADER)
    return resp


async def observe(c: SelfClient, name: bytes) -> AsyncIterator[pb.LeaderResponse]:
    """The leader's key-value now and after each change (concurrency.Election.Observe)."""
    prefix = name + b"/"
    while True:
        resp = await c.kv.Range(first_create(prefix))
        if resp.kvs:
            header, kv = resp.header, resp.kvs[0]
        else:
            header, kv = await _first_put(c, prefix, resp.header.revision)
        yield pb.LeaderResponse(header=header, kv=kv)
        async with aclosing(c.watch(kv.key, header.revision + 1)) as responses:
            deleted = False
            async for wr in responses:
                for ev in wr.events:
                    if ev.type == kv_pb2.Event.DELETE:
                        deleted = True
                        break
                    yield pb.LeaderResponse(header=wr.header, kv=ev.kv)
                if deleted:
                    break


async def _first_put(c: SelfClient, prefix: bytes,
                     rev: int) -> tuple[rpc.ResponseHeader, kv_pb2.KeyValue]:
    """No leader yet: wait for the first put under prefix (deletes would make us spin)."""
    async with aclosing(c.watch(prefix, rev, prefix=True)) as responses:
        async for wr in responses:
            for ev in wr.events:
                if ev.type == kv_pb2.Event.PUT:
                    header = rpc.ResponseHeader()
                    header.CopyFrom(wr.header)
                    header.revision = ev.kv.mod_revision  # the batch may hold later puts
                    return header, ev.kv
    raise RecipeError("lost watcher waiting for a leader")


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, server: EtcdServer, client: SelfClient | None = None) -> None:
        self.s = server
        self.c = client or SelfClient(server)

    async def Campaign(self, r: pb.CampaignRequest,
                       ctx: grpc.aio.ServicerContext) -> pb.CampaignResponse:
        try:
            header, leader = await campaign(self.c, r.name, r.lease, r.value)
        except (grpc.aio.AioRpcError, RecipeError) as e:
            await fail(ctx, e)
        return pb.CampaignResponse(header=header, leader=leader)

    async def Proclaim(self, r: pb.ProclaimRequest,
                       ctx: grpc.aio.ServicerContext) -> pb.ProclaimResponse:
        try:
            if not r.HasField("leader"):
                raise RecipeError(ERR_MISSING_LEADER_KEY)
            header = await proclaim(self.c, r.leader, r.value)
        except (grpc.aio.AioRpcError, RecipeError) as e:
            await fail(ctx, e)
        return pb.ProclaimResponse(header=header)

    async def Leader(self, r: pb.LeaderRequest, ctx: grpc.aio.ServicerContext) -> pb.LeaderResponse:
        try:
            resp = await leader_kv(self.c, r.name)
        except (grpc.aio.AioRpcError, RecipeError) as e:
            await fail(ctx, e)
        return pb.LeaderResponse(header=resp.header, kv=resp.kvs[0])

    async def Observe(self, r: pb.LeaderRequest,
                      ctx: grpc.aio.ServicerContext) -> AsyncIterator[pb.LeaderResponse]:
        # Like etcd, a failing client call just ends the stream (Observe's channel closes).
        try:
            async with aclosing(observe(self.c, r.name)) as updates:
                async for resp in updates:
                    yield resp
        except (grpc.aio.AioRpcError, RecipeError):
            return

    async def Resign(self, r: pb.ResignRequest, ctx: grpc.aio.ServicerContext) -> pb.ResignResponse:
        try:
            if not r.HasField("leader"):
                raise RecipeError(ERR_MISSING_LEADER_KEY)
            header = await resign(self.c, r.leader)
        except (grpc.aio.AioRpcError, RecipeError) as e:
            await fail(ctx, e)
        return pb.ResignResponse(header=header)
