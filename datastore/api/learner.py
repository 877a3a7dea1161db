"""etcd's learner gate (v3rpc/interceptor.go): a learner serves almost no client RPCs.

On a member that is a learner, every unary RPC except ``Status`` and a serializable
``Range`` fails with ``etcdserver: rpc not supported for learner``, and so does every
stream except ``Maintenance/Snapshot`` (etcd 3.5's ``isRPCSupportedForLearner`` and its
stream interceptor). Clients are expected to talk to voting members.
"""

from __future__ import annotations

from typing import Any

import grpc

from datastore import errors
from datastore.server.etcdserver import EtcdServer

STATUS_METHOD = "/etcdserverpb.Maintenance/Status"
RANGE_METHOD = "/etcdserverpb.KV/Range"
SNAPSHOT_METHOD = "/etcdserverpb.Maintenance/Snapshot"
_ERR = errors.ErrNotSupportedForLearner()


def is_learner(s: EtcdServer) -> bool:
    m = s.members.members.get(s.member_id)
    return m is not None and m.is_learner


async def _refuse(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
    await ctx.abort(grpc.StatusCode[_ERR.code], _ERR.message)


def learner_handler(h: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """What ``h`` becomes while this member is a learner (built once, not per call)."""
    if method in (STATUS_METHOD, SNAPSHOT_METHOD):
        return h
    kw = {"request_deserializer": h.request_deserializer,
          "response_serializer": h.response_serializer}
    if method == RANGE_METHOD and h.unary_unary is not None:
        inner = h.unary_unary

        async def range_(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
            if not request.serializable:
                await _refuse(request, ctx)
            return await inner(request, ctx)
        return grpc.unary_unary_rpc_method_handler(range_, **kw)
    if h.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_refuse, **kw)
    if h.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_refuse, **kw)
    if h.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_refuse, **kw)
    return grpc.stream_stream_rpc_method_handler(_refuse, **kw)
