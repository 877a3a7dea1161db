"""etcdserverpb.Lease: grant/revoke go through the log; keep-alives renew on the leader.

With auth on, every lease call needs an authenticated user, and a user other than root
may renew a lease only if it may write every key the lease holds, and see a lease's keys
(time-to-live with keys, the lease list) only if it may read them: the rules etcd 3.5.28+
and 3.6 apply (before them a lease id was enough).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.internalpb.internal_pb2 import InternalRaftRequest
from datastore.api.status import abort, respond
from datastore.auth.grpcctx import require_auth_info, with_header
from datastore.auth.tokens import AuthInfo
from datastore.server.etcdserver import EtcdServer
from datastore.server.quota import check_quota


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def LeaseGrant(self, r: rpc.LeaseGrantRequest,
                         ctx: grpc.aio.ServicerContext) -> rpc.LeaseGrantResponse:
        return await respond(ctx, self.s, self._grant(r, ctx))

    async def _grant(self, r: rpc.LeaseGrantRequest, ctx: grpc.aio.ServicerContext) -> object:
        await check_quota(self.s, 64)
        await require_auth_info(self.s, ctx)
        req = rpc.LeaseGrantRequest(TTL=r.TTL, ID=r.ID or self.s.new_lease_id())
        return await self.s.propose(InternalRaftRequest(lease_grant=req))

    async def LeaseRevoke(self, r: rpc.LeaseRevokeRequest,
                          ctx: grpc.aio.ServicerContext) -> rpc.LeaseRevokeResponse:
        return await respond(ctx, self.s, self._revoke(r, ctx))

    async def _revoke(self, r: rpc.LeaseRevokeRequest, ctx: grpc.aio.ServicerContext) -> object:
        await require_auth_info(self.s, ctx)
        # apply checks write permission on every key attached to the lease (etcd)
        req = await with_header(self.s, ctx, InternalRaftRequest(lease_revoke=r))
        return await self.s.propose(req)

    def _check_keys(self, ai: AuthInfo | None, lease_ids: Iterable[int], write: bool) -> None:
        """etcd's checkLeaseRenew / checkLeaseTimeToLive / checkLeaseLeases: root may (and
        anyone while auth is off); any other user needs write (renew) or read permission
        on every key the leases hold."""
        store = self.s.auth
        if store.is_admin(ai):
            return
        check = store.check_put if write else store.check_read_key
        for lid in lease_ids:
            le = self.s.lessor.lookup(lid)
            for key in sorted(le.keys) if le is not None else ():
                check(ai, key)

    async def LeaseKeepAlive(self, requests: AsyncIterator[rpc.LeaseKeepAliveRequest],
                             ctx: grpc.aio.ServicerContext) -> AsyncIterator[rpc.LeaseKeepAliveResponse]:
        async for r in requests:
            try:
                self._check_keys(await require_auth_info(self.s, ctx), (r.ID,), write=True)
                if self.s.is_leader or self.s.transport is None:
                    ttl = self.s.lessor.renew(r.ID)
                else:  # etcd forwards a follower's keep-alive to the leader
                    ttl = await self.s.transport.lease_renew(r.ID)
            except errors.ErrLeaseNotFound:
                ttl = 0  # etcd answers an unknown lease with TTL 0, not an error
            except errors.EtcdError as e:
                await abort(ctx, e)
            yield rpc.LeaseKeepAliveResponse(header=self.s.header(), ID=r.ID, TTL=ttl)

    async def LeaseTimeToLive(self, r: rpc.LeaseTimeToLiveRequest,
                              ctx: grpc.aio.ServicerContext) -> rpc.LeaseTimeToLiveResponse:
        s = self.s
        try:
            ai = await require_auth_info(s, ctx)
            rev = s.auth.revision if ai is not None else 0  # 0: auth was off
            if r.keys:
                self._check_keys(ai, (r.ID,), write=False)
            if s.transport is None or s.is_leader:
                await s.read_barrier()
                got = s.lease_ttl_local(r.ID, r.keys)
            else:
                # Only the leader tracks expiry (a follower's lessor would report the full
                # TTL): etcd forwards TimeToLive to the leader.
                got = await s.transport.lease_time_to_live(r.ID, r.keys, s.request_timeout())
            if r.keys and s.auth.enabled and rev != s.auth.revision:
                raise errors.ErrAuthOldRevision()  # the keys were checked against older rules
        except errors.EtcdError as e:
            await abort(ctx, e)
        if got.TTL == -1:
            return rpc.LeaseTimeToLiveResponse(header=s.header(), ID=r.ID, TTL=-1)
        return rpc.LeaseTimeToLiveResponse(header=s.header(), ID=r.ID, TTL=got.TTL,
                                           grantedTTL=got.granted_TTL, keys=list(got.keys))

    async def LeaseLeases(self, r: rpc.LeaseLeasesRequest,
                          ctx: grpc.aio.ServicerContext) -> rpc.LeaseLeasesResponse:
        try:
            await self.s.read_barrier()
            self._check_keys(await require_auth_info(self.s, ctx), self.s.lessor.leases,
                             write=False)
        except errors.EtcdError as e:
            await abort(ctx, e)
        resp = rpc.LeaseLeasesResponse(header=self.s.header())
        for lid in sorted(self.s.lessor.leases):
            resp.leases.add(ID=lid)
        return resp
