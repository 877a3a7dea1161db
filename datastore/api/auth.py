"""etcdserverpb.Auth: every call goes through the log (etcd 3.5's v3_server.go).

Passwords are hashed here, on the member that proposes, so the log never holds a
plaintext password and apply stays deterministic. Authenticate checks the password here
too (bcrypt in a small dedicated thread pool: a flood of guesses queues there instead of
starving the event loop), then proposes an entry that mints the token on every member;
if the auth state changed between the check and the apply, it checks again (etcd's loop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.internalpb.internal_pb2 import InternalAuthenticateRequest, InternalRaftRequest
from datastore.api.status import abort
from datastore.auth.grpcctx import with_header
from datastore.auth.store import ErrNoPasswordUser, check_password, hash_password
from datastore.server.etcdserver import EtcdServer

log = logging.getLogger("datastore.auth")

# bcrypt at cost 10 is ~50-100 ms of CPU; two threads bound what guessing can take.
_BCRYPT_POOL = ThreadPoolExecutor(2, thread_name_prefix="bcrypt")
MAX_AUTHENTICATE_RETRIES = 5


async def _bcrypt(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_BCRYPT_POOL, fn, *args)


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    async def _call(self, ctx: grpc.aio.ServicerContext, work: Awaitable[Any]) -> Any:
        try:
            resp = await work
        except errors.EtcdError as e:
            await abort(ctx, e)
        self.s.fill(resp.header)
        return resp

    async def _propose(self, ctx: grpc.aio.ServicerContext, **field: Any) -> Any:
        req = await with_header(self.s, ctx, InternalRaftRequest(**field))
        return await self.s.propose(req)

    def _simple(self, ctx: grpc.aio.ServicerContext, **field: Any) -> Awaitable[Any]:
        return self._call(ctx, self._propose(ctx, **field))

    # ---- enable / disable / status -----------------------------------------------------
    async def AuthEnable(self, r: rpc.AuthEnableRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_enable=r)

    async def AuthDisable(self, r: rpc.AuthDisableRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_disable=r)

    async def AuthStatus(self, r: rpc.AuthStatusRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_status=r)

    async def Authenticate(self, r: rpc.AuthenticateRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._call(ctx, self._authenticate(r))

    async def _authenticate(self, r: rpc.AuthenticateRequest) -> rpc.AuthenticateResponse:
        s = self.s
        store = s.auth
        await s.read_barrier()
        for _ in range(MAX_AUTHENTICATE_RETRIES):
            if not store.enabled:
                raise errors.ErrAuthNotEnabled()
            user = store.users.get(r.name)
            checked = store.revision
            if user is not None and user.options.no_password:
                raise ErrNoPasswordUser()
            ok = user is not None and await _bcrypt(check_password, user.password, r.password)
            if not ok:
                log.warning("invalid authentication was requested", extra={"user": r.name})
                raise errors.ErrAuthFailed()
            req = InternalRaftRequest(authenticate=InternalAuthenticateRequest(
                name=r.name, simple_token=store.tokens.gen_prefix()))
            resp = await s.propose(req)
            assert isinstance(resp, rpc.AuthenticateResponse)
            if not resp.token:  # a verify-only JWT member cannot sign (etcd: ErrVerifyOnly)
                raise errors.EtcdError("auth: token signing attempted with verify-only key")
            if checked == store.revision:
                return resp
            log.info("auth revision changed while checking a password; checking again")
        raise errors.ErrAuthOldRevision()

    # ---- users ---------------------------------------------------------------------------
    async def UserAdd(self, r: rpc.AuthUserAddRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._call(ctx, self._user_add(r, ctx))

    async def _user_add(self, r: rpc.AuthUserAddRequest, ctx: grpc.aio.ServicerContext) -> Any:
        req = rpc.AuthUserAddRequest(name=r.name, options=r.options)
        if not r.options.no_password:
            hashed = await _bcrypt(hash_password, r.password, self.s.auth.bcrypt_cost)
            req.hashedPassword = hashed.decode()
        return await self._propose(ctx, auth_user_add=req)

    async def UserGet(self, r: rpc.AuthUserGetRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_user_get=r)

    async def UserList(self, r: rpc.AuthUserListRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_user_list=r)

    async def UserDelete(self, r: rpc.AuthUserDeleteRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_user_delete=r)

    async def UserChangePassword(self, r: rpc.AuthUserChangePasswordRequest,
                                 ctx: grpc.aio.ServicerContext) -> Any:
        return await self._call(ctx, self._change_password(r, ctx))

    async def _change_password(self, r: rpc.AuthUserChangePasswordRequest,
                               ctx: grpc.aio.ServicerContext) -> Any:
        req = rpc.AuthUserChangePasswordRequest(name=r.name)
        if r.password:  # etcd: an empty password leaves the hash empty (no login possible)
            hashed = await _bcrypt(hash_password, r.password, self.s.auth.bcrypt_cost)
            req.hashedPassword = hashed.decode()
        return await self._propose(ctx, auth_user_change_password=req)

    async def UserGrantRole(self, r: rpc.AuthUserGrantRoleRequest,
                            ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_user_grant_role=r)

    async def UserRevokeRole(self, r: rpc.AuthUserRevokeRoleRequest,
                             ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_user_revoke_role=r)

    # ---- roles ---------------------------------------------------------------------------
    async def RoleAdd(self, r: rpc.AuthRoleAddRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_role_add=r)

    async def RoleGet(self, r: rpc.AuthRoleGetRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_role_get=r)

    async def RoleList(self, r: rpc.AuthRoleListRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_role_list=r)

    async def RoleDelete(self, r: rpc.AuthRoleDeleteRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_role_delete=r)

    async def RoleGrantPermission(self, r: rpc.AuthRoleGrantPermissionRequest,
                                  ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_role_grant_permission=r)

    async def RoleRevokePermission(self, r: rpc.AuthRoleRevokePermissionRequest,
                                   ctx: grpc.aio.ServicerContext) -> Any:
        return await self._simple(ctx, auth_role_revoke_permission=r)
