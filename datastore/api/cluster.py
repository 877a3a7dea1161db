"""etcdserverpb.Cluster: membership list and changes (etcd's semantics; see cluster_ops)."""

from __future__ import annotations

from urllib.parse import urlparse

import grpc

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.status import abort
from datastore.auth.grpcctx import forward_credentials, require_admin, require_auth_info
from datastore.server.etcdserver import EtcdServer


def _check_urls(urls: list[str]) -> list[str]:
    """etcd's types.NewURLs: http(s)://host:port, no path."""
    if not urls:
        raise errors.ErrMemberBadURLs()
    for u in urls:
        p = urlparse(u)
        if p.scheme not in ("http", "https") or not p.hostname or p.port is None \
                or p.path not in ("", "/"):
            raise errors.ErrMemberBadURLs()
    return sorted(urls)


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def MemberList(self, r: rpc.MemberListRequest,
                         ctx: grpc.aio.ServicerContext) -> rpc.MemberListResponse:
        try:
            if r.linearizable:
                await self.s.read_barrier()
            await require_auth_info(self.s, ctx)  # any user (etcd 3.5.29+)
        except errors.EtcdError as e:
            await abort(ctx, e)
        return rpc.MemberListResponse(header=self.s.header(), members=self.s.members.to_pb())

    async def MemberAdd(self, r: rpc.MemberAddRequest,
                        ctx: grpc.aio.ServicerContext) -> rpc.MemberAddResponse:
        try:
            await require_admin(self.s, ctx)  # etcd's checkMembershipOperationPermission
            urls = _check_urls(list(r.peerURLs))
            member, members = await self.s.cluster_ops.add_member(urls, r.isLearner)
        except errors.EtcdError as e:
            await abort(ctx, e)
        return rpc.MemberAddResponse(header=self.s.header(), member=member, members=members)

    async def MemberRemove(self, r: rpc.MemberRemoveRequest,
                           ctx: grpc.aio.ServicerContext) -> rpc.MemberRemoveResponse:
        try:
            await require_admin(self.s, ctx)
            members = await self.s.cluster_ops.remove_member(r.ID)
        except errors.EtcdError as e:
            await abort(ctx, e)
        return rpc.MemberRemoveResponse(header=self.s.header(), members=members)

    async def MemberUpdate(self, r: rpc.MemberUpdateRequest,
                           ctx: grpc.aio.ServicerContext) -> rpc.MemberUpdateResponse:
        try:
            await require_admin(self.s, ctx)
            urls = _check_urls(list(r.peerURLs))
            members = await self.s.cluster_ops.update_member(r.ID, urls)
        except errors.EtcdError as e:
            await abort(ctx, e)
        return rpc.MemberUpdateResponse(header=self.s.header(), members=members)

    async def MemberPromote(self, r: rpc.MemberPromoteRequest,
                            ctx: grpc.aio.ServicerContext) -> rpc.MemberPromoteResponse:
        try:
            await require_admin(self.s, ctx)
            forward_credentials(self.s, ctx)  # a follower asks the leader as the caller
            members = await self.s.cluster_ops.promote_member(r.ID)
        except errors.EtcdError as e:
            await abort(ctx, e)
        return rpc.MemberPromoteResponse(header=self.s.header(), members=members)
