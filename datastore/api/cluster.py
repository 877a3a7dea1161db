"""etcdserverpb.Cluster: membership (single-member for now; changes come with multi-member)."""

from __future__ import annotations

import grpc

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.status import abort
from datastore.server.etcdserver import EtcdServer


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def MemberList(self, r: rpc.MemberListRequest,
                         ctx: grpc.aio.ServicerContext) -> rpc.MemberListResponse:
        if r.linearizable:
            try:
                await self.s.read_barrier()
            except errors.EtcdError as e:
                await abort(ctx, e)
        return rpc.MemberListResponse(header=self.s.header(), members=self.s.members.to_pb())

    async def _unsupported(self, ctx: grpc.aio.ServicerContext) -> None:
        await ctx.abort(grpc.StatusCode.UNIMPLEMENTED,
                        "datastore: membership changes need multi-member support (not yet built)")

    async def MemberAdd(self, r: rpc.MemberAddRequest,
                        ctx: grpc.aio.ServicerContext) -> rpc.MemberAddResponse:
        await self._unsupported(ctx)
        return rpc.MemberAddResponse()

    async def MemberRemove(self, r: rpc.MemberRemoveRequest,
                           ctx: grpc.aio.ServicerContext) -> rpc.MemberRemoveResponse:
        await self._unsupported(ctx)
        return rpc.MemberRemoveResponse()

    async def MemberUpdate(self, r: rpc.MemberUpdateRequest,
                           ctx: grpc.aio.ServicerContext) -> rpc.MemberUpdateResponse:
        await self._unsupported(ctx)
        return rpc.MemberUpdateResponse()

    async def MemberPromote(self, r: rpc.MemberPromoteRequest,
                            ctx: grpc.aio.ServicerContext) -> rpc.MemberPromoteResponse:
        await self._unsupported(ctx)
        return rpc.MemberPromoteResponse()
