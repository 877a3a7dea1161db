"""Turn datastore errors into gRPC statuses with etcd's codes and messages."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from datastore import errors

if TYPE_CHECKING:
    from datastore.server.etcdserver import EtcdServer


async def abort(ctx: grpc.aio.ServicerContext, e: errors.EtcdError) -> NoReturn:
    await ctx.abort(grpc.StatusCode[e.code], e.message)
    raise AssertionError("unreachable")  # ctx.abort always raises


async def respond(ctx: grpc.aio.ServicerContext, server: EtcdServer, work: Awaitable[Any]) -> Any:
    """Await ``work``; map an etcd error to its gRPC status, else fill the header."""
    try:
        resp = await work
    except errors.EtcdError as e:
        await abort(ctx, e)
    server.fill(resp.header)
    return resp
