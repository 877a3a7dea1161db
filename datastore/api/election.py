"""v3electionpb.Election: etcd's election service, the Election recipe run server-side.

As in etcd (server/etcdserver/api/v3election) every call is a short-lived session on the
caller's lease, and ``datastore.client.recipes.Election`` runs through the member's
client of itself (see datastore/api/lock.py). Keys follow Go's
``clientv3/concurrency.Election``: a candidate's key is ``<name>/<lease hex>`` and the
leader is the key under ``<name>/`` with the oldest create revision, so ``etcdctl
elect`` candidates and observers take part in the same elections.

etcd 3.4 behaviour kept on purpose (e2e/test_lock_election.py checks it against etcd):
- Proclaim with a key that does not hold the leadership fails with ``election: not
  leader``; Resign with such a key succeeds without deleting anything;
- Leader without a leader fails with ``election: no leader``; Observe waits for one;
- a missing ``leader`` field fails with ``"leader" field must be provided``;
- a lease of 0 gets a fresh lease with the 60 s session TTL, never kept alive;
- errors are gRPC UNKNOWN with etcd's message.
Response headers of Leader and Observe carry this member's revision at reply time (the
recipe returns key-values, not the read's header).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, cast

import grpc

from datastore.api.lock import RecipeError, SelfClient, fail, withdraw_if_abandoned
from datastore.api.mvccpb.kv_pb2 import KeyValue
from datastore.api.v3electionpb import v3election_pb2 as pb
from datastore.api.v3electionpb import v3election_pb2_grpc
from datastore.auth.grpcctx import forward_credentials
from datastore.client.errors import ClientError
from datastore.client.recipes import Election, Session
from datastore.client.recipes.waiting import lease_key

if TYPE_CHECKING:
    from datastore.server.etcdserver import EtcdServer

ERR_MISSING_LEADER_KEY = '"leader" field must be provided'
NO_LEASE = -1  # etcd's Leader/Observe sessions: a lease ID that is never used or granted


def _leader_key(r: pb.ProclaimRequest | pb.ResignRequest) -> pb.LeaderKey:
    if not r.HasField("leader"):
        raise RecipeError(ERR_MISSING_LEADER_KEY)
    return r.leader


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, server: EtcdServer, client: SelfClient | None = None) -> None:
        self.s = server
        self.c = client or SelfClient(server)

    def _observer(self, name: bytes) -> Election:
        return Election(Session(self.c.client, lease_id=NO_LEASE), name)

    async def Campaign(self, r: pb.CampaignRequest,
                       ctx: grpc.aio.ServicerContext) -> pb.CampaignResponse:
        forward_credentials(self.s, ctx)  # act as the caller, as etcd's v3election does
        try:
            session = await self.c.session(r.lease)
            e = Election(session, r.name)
            await withdraw_if_abandoned(e.campaign(r.value), self.c.client,
                                        lease_key(r.name + b"/", session.lease_id))
        except ClientError as err:
            await fail(ctx, err)
        return pb.CampaignResponse(header=e.header, leader=pb.LeaderKey(
            name=r.name, key=e.key, rev=e.rev, lease=session.lease_id))

    async def Proclaim(self, r: pb.ProclaimRequest,
                       ctx: grpc.aio.ServicerContext) -> pb.ProclaimResponse:
        forward_credentials(self.s, ctx)  # act as the caller, as etcd's v3election does
        try:
            leader = _leader_key(r)
            e = Election.resume(await self.c.session(leader.lease), leader.name, leader.key,
                                leader.rev)
            await e.proclaim(r.value)
        except (ClientError, RecipeError) as err:
            await fail(ctx, err)
        return pb.ProclaimResponse(header=e.header)

    async def Resign(self, r: pb.ResignRequest, ctx: grpc.aio.ServicerContext) -> pb.ResignResponse:
        forward_credentials(self.s, ctx)  # act as the caller, as etcd's v3election does
        try:
            leader = _leader_key(r)
            e = Election.resume(await self.c.session(leader.lease), leader.name, leader.key,
                                leader.rev)
            await e.resign()  # a key that is not the leader's: nothing deleted, no error
        except (ClientError, RecipeError) as err:
            await fail(ctx, err)
        return pb.ResignResponse(header=e.header)

    async def Leader(self, r: pb.LeaderRequest, ctx: grpc.aio.ServicerContext) -> pb.LeaderResponse:
        forward_credentials(self.s, ctx)  # act as the caller, as etcd's v3election does
        try:
            kv = await self._observer(r.name).leader()
        except ClientError as err:
            await fail(ctx, err)
        return pb.LeaderResponse(header=self.s.header(), kv=kv)

    async def Observe(self, r: pb.LeaderRequest,
                      ctx: grpc.aio.ServicerContext) -> AsyncIterator[pb.LeaderResponse]:
        forward_credentials(self.s, ctx)  # act as the caller, as etcd's v3election does
        # Like etcd, a failing client call just ends the stream (Observe's channel closes).
        # aclosing: a stream closed at our yield must also end the recipe's watch.
        updates = cast(AsyncGenerator[KeyValue, None], self._observer(r.name).observe())
        try:
            async with aclosing(updates):
                async for kv in updates:
                    yield pb.LeaderResponse(header=self.s.header(), kv=kv)
        except ClientError:
            return
