"""Turn datastore errors into gRPC statuses with etcd's codes and messages."""

from __future__ import annotations

from typing import NoReturn

import grpc

from datastore import errors


async def abort(ctx: grpc.aio.ServicerContext, e: errors.EtcdError) -> NoReturn:
    await ctx.abort(grpc.StatusCode[e.code], e.message)
    raise AssertionError("unreachable")  # ctx.abort always raises
