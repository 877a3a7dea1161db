"""etcdserverpb.KV: thin adapter (validate -> server -> map errors -> fill header)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from datastore import errors, validation
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.internalpb.internal_pb2 import InternalRaftRequest
from datastore.api.status import abort, respond
from datastore.auth.grpcctx import auth_info, check_fresh, require_admin, with_header
from datastore.server.applier import (
    is_plain_range,
    is_txn_readonly,
    range_in,
    range_wire,
    txn_ops,
)
from datastore.server.etcdserver import EtcdServer
from datastore.server.quota import refuse_over_quota, within_quota


def _txn_serializable(rt: rpc.TxnRequest) -> bool:
    return all(op.request_range.serializable for op in txn_ops(rt)
               if op.WhichOneof("request") == "request_range")


STREAM_FIRST_CHUNK = 10  # keys in a RangeStream's first chunk (etcd 3.7's)


def next_chunk_limit(limit: int, size: int, target: int) -> int:
    """etcd 3.7: double the chunk below half the target size, halve it above twice; never 0."""
    if size < target // 2:
        limit *= 2
    elif size > target * 2:
        limit //= 2
    return max(1, limit)


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    # Put, Range and Txn are the hot paths: one coroutine each, with no helper awaits on
    # the common path (each await of a coroutine is a frame and a send per request).
    async def Range(self, r: rpc.RangeRequest,
                    ctx: grpc.aio.ServicerContext) -> rpc.RangeResponse | bytes:
        s = self.s
        try:
            validation.check_range_request(r)
            if not r.serializable:
                await s.read_barrier()
            ai = None
            if s.auth.enabled:  # the only auth cost when auth is off
                ai = await auth_info(s, ctx)
                s.auth.check_range(ai, r.key, r.range_end)
            if is_plain_range(r):  # the common case, answered in wire form
                header = s.header(0)
                resp: rpc.RangeResponse | bytes = range_wire(s.kv, r, header)
            else:
                resp = range_in(s.kv, r)
                s.fill(resp.header)
            if ai is not None:
                check_fresh(s, ai)
        except errors.EtcdError as e:
            await abort(ctx, e)
        return resp

    async def RangeStream(self, r: rpc.RangeRequest,
                          ctx: grpc.aio.ServicerContext) -> AsyncIterator[rpc.RangeStreamResponse]:
        """etcd 3.7's Range in chunks (kube-apiserver lists with it): every chunk is read at
        the request's revision, or else the store's when the stream began (the header's
        revision, as etcd), so writes in between are not seen; a compaction in between
        ends the stream with ErrCompacted. Header, more and count ride on the last chunk
        only; the count is the whole range's, as Range's."""
        s = self.s
        if r.sort_order != rpc.RangeRequest.NONE and not (
                r.sort_target == rpc.RangeRequest.KEY and r.sort_order == rpc.RangeRequest.ASCEND):
            await ctx.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "RangeStream does not support custom sort orders")
        if r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision:
            await ctx.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "RangeStream does not support revision filters")
        try:
            validation.check_range_request(r)
            if not r.serializable:
                await s.read_barrier()
            ai = None
            if s.auth.enabled:
                ai = await auth_info(s, ctx)
                s.auth.check_range(ai, r.key, r.range_end)
            if r.count_only:
                resp = range_in(s.kv, r)
                resp.header.CopyFrom(s.header(resp.header.revision))
                check_fresh(s, ai)
                yield rpc.RangeStreamResponse(range_response=resp)
                return
            total = r.limit or None
            chunk = rpc.RangeRequest()
            chunk.CopyFrom(r)
            # key order is the only order a stream allows (ascending by key, or none)
            chunk.sort_target, chunk.sort_order = rpc.RangeRequest.KEY, rpc.RangeRequest.NONE
            chunk.limit = min(STREAM_FIRST_CHUNK, total or STREAM_FIRST_CHUNK)
            sent, header_rev = 0, 0
            while True:
                resp = range_in(s.kv, chunk)
                check_fresh(s, ai)
                if not header_rev:  # the store's revision when the stream began, as etcd
                    header_rev = resp.header.revision
                    chunk.revision = chunk.revision or header_rev  # pinned from now on
                n = len(resp.kvs)
                if not resp.more or (total is not None and sent + n == total):
                    # resp.count counts from this chunk's first key: add what went before
                    resp.header.CopyFrom(s.header(header_rev))
                    resp.count += sent
                    yield rpc.RangeStreamResponse(range_response=resp)
                    return
                size = resp.ByteSize()
                last = resp.kvs[-1].key
                resp.ClearField("header")
                resp.more, resp.count = False, 0
                yield rpc.RangeStreamResponse(range_response=resp)
                sent += n
                chunk.key = last + b"\x00"
                chunk.limit = next_chunk_limit(chunk.limit, size, s.cfg.max_request_bytes)
                if total is not None:
                    chunk.limit = min(chunk.limit, total - sent)
        except errors.EtcdError as e:
            await abort(ctx, e)

    async def Put(self, r: rpc.PutRequest, ctx: grpc.aio.ServicerContext) -> rpc.PutResponse:
        s = self.s
        try:
            validation.check_put_request(r)
            if not within_quota(s, len(r.key) + len(r.value)):
                await refuse_over_quota(s)
            req = InternalRaftRequest(put=r)
            if s.auth.enabled:
                await with_header(s, ctx, req)
            else:  # auth revision 0: refused if `auth enable` is applied first
                req.header.SetInParent()
            resp = await s.propose(req)
        except errors.EtcdError as e:
            await abort(ctx, e)
        s.fill(resp.header)  # type: ignore[attr-defined]
        return resp  # type: ignore[return-value]

    async def DeleteRange(self, r: rpc.DeleteRangeRequest,
                          ctx: grpc.aio.ServicerContext) -> rpc.DeleteRangeResponse:
        return await respond(ctx, self.s, self._delete_range(r, ctx))

    async def _delete_range(self, r: rpc.DeleteRangeRequest, ctx: grpc.aio.ServicerContext) -> object:
        validation.check_delete_request(r)
        req = InternalRaftRequest(delete_range=r)
        if self.s.auth.enabled:
            await with_header(self.s, ctx, req)
        else:
            req.header.SetInParent()
        return await self.s.propose(req)

    async def Txn(self, r: rpc.TxnRequest, ctx: grpc.aio.ServicerContext) -> rpc.TxnResponse:
        s = self.s
        try:
            validation.check_txn_request(r, s.cfg.max_txn_ops)
            if is_txn_readonly(r):
                # like etcd: read-only txns skip the log and run on local state
                if not _txn_serializable(r):
                    await s.read_barrier()
                if s.auth.enabled:
                    ai = await auth_info(s, ctx)
                    s.auth.check_txn(ai, r)
                    resp = s.applier.read_only_txn(r)
                    check_fresh(s, ai)
                else:
                    resp = s.applier.read_only_txn(r)
            else:
                if not within_quota(s, r.ByteSize()):
                    await refuse_over_quota(s)
                req = InternalRaftRequest(txn=r)
                if s.auth.enabled:
                    await with_header(s, ctx, req)
                else:
                    req.header.SetInParent()
                resp = await s.propose(req)  # type: ignore[assignment]
        except errors.EtcdError as e:
            await abort(ctx, e)
        s.fill(resp.header)
        return resp

    async def Compact(self, r: rpc.CompactionRequest,
                      ctx: grpc.aio.ServicerContext) -> rpc.CompactionResponse:
        return await respond(ctx, self.s, self._compact(r, ctx))

    async def _compact(self, r: rpc.CompactionRequest,
                       ctx: grpc.aio.ServicerContext) -> rpc.CompactionResponse:
        await require_admin(self.s, ctx)  # root's alone once auth is on (etcd 3.5.28+)
        resp = await self.s.propose(InternalRaftRequest(compaction=r))
        if r.physical:
            # etcd: answer once the deleted revisions are gone, and make that durable so a
            # crash cannot bring back a compaction the client saw finished
            await self.s.kv.compactions.wait_finished(r.revision)
            await asyncio.get_running_loop().run_in_executor(None, self.s.backend.sync)
        return resp  # type: ignore[return-value]
