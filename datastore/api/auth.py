"""etcdserverpb.Auth: authentication is not built yet; report it as disabled, like etcd does."""

from __future__ import annotations

import grpc

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.status import abort
from datastore.server.etcdserver import EtcdServer


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def AuthStatus(self, r: rpc.AuthStatusRequest,
                         ctx: grpc.aio.ServicerContext) -> rpc.AuthStatusResponse:
        return rpc.AuthStatusResponse(header=self.s.header(), enabled=False)

    async def Authenticate(self, r: rpc.AuthenticateRequest,
                           ctx: grpc.aio.ServicerContext) -> rpc.AuthenticateResponse:
        await abort(ctx, errors.ErrAuthNotEnabled())
