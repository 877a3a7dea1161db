"""v3lockpb.Lock: etcd's lock service, a server-side run of the Mutex recipe.

Like etcd (server/etcdserver/api/v3lock), the service is a client of its own member: it
talks to the member's client URL through an in-process gRPC client, so every step goes
through the ordinary KV/Watch paths (raft, leader forwarding, quotas) and the keys are
laid out exactly as Go's ``clientv3/concurrency.Mutex`` does: ``<name>/<lease hex>``. A
Python holder, an ``etcdctl lock`` holder and a Lock RPC caller therefore exclude each other.

Semantics copied from etcd 3.4 (checked against it by e2e/test_lock_election.py):
- the caller's lease owns the key; lease 0 means "grant one with etcd's 60 s session
  TTL", never kept alive (etcd orphans the session), so such a lock lasts 60 s at most;
- locking again with the lease that holds the lock returns the same key at once;
- a caller that goes away while waiting has its waiter key deleted;
- Unlock just deletes the key (a missing key is not an error);
- errors reach the caller as gRPC UNKNOWN with etcd's message, as etcd 3.4 sends them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlparse

import grpc

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.mvccpb import kv_pb2
from datastore.api.v3lockpb import v3lock_pb2 as pb
from datastore.api.v3lockpb import v3lock_pb2_grpc

if TYPE_CHECKING:
    from datastore.server.etcdserver import EtcdServer

log = logging.getLogger("datastore.api.lock")

SESSION_TTL = 60  # etcd's concurrency.NewSession default TTL, used when the caller gives no lease


class RecipeError(Exception):
    """A recipe-level failure; etcd 3.4 returns these as UNKNOWN with this text."""


def self_target(server: EtcdServer) -> str:
    """host:port of this member's first client URL, with a wildcard host made loopback."""
    url = urlparse(server.cfg.listen_client_urls[0])
    host = url.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{url.port}"


class SelfClient:
    """The member's client of itself (etcd's v3client), created on first use.

    One channel per member serves every Lock/Election call; it is closed with the server's
    event loop, when the process ends.
    """

    def __init__(self, server: EtcdServer) -> None:
        self.server = server
        self._channel: grpc.aio.Channel | None = None

    def _chan(self) -> grpc.aio.Channel:
        if self._channel is None:
            target = self_target(self.server)
            self._channel = grpc.aio.insecure_channel(target, options=[
                ("grpc.max_receive_message_length", 2**31 - 1)])
            log.info("lock/election services use the member's own client URL",
                     extra={"target": target})
        return self._channel

    @property
    def kv(self) -> rpc_pb2_grpc.KVStub:
        return rpc_pb2_grpc.KVStub(self._chan())

    @property
    def lease(self) -> rpc_pb2_grpc.LeaseStub:
        return rpc_pb2_grpc.LeaseStub(self._chan())

    async def session_lease(self, lease: int) -> int:
        """etcd's NewSession(WithLease(lease)) followed by Orphan(): no keep-alive."""
        if lease:
            return lease
        resp = await self.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=SESSION_TTL))
        return resp.ID

    async def delete(self, key: bytes) -> rpc.DeleteRangeResponse:
        return await self.kv.DeleteRange(rpc.DeleteRangeRequest(key=key))

    async def watch(self, key: bytes, start_revision: int,
                    prefix: bool = False) -> AsyncIterator[rpc.WatchResponse]:
        """Watch responses carrying events; the stream is cancelled when the caller stops."""
        create = rpc.WatchCreateRequest(key=key, start_revision=start_revision,
                                        range_end=prefix_end(key) if prefix else b"")
        # A half-closed request stream keeps the watch alive (etcd and datastore alike).
        call = rpc_pb2_grpc.WatchStub(self._chan()).Watch(
            [rpc.WatchRequest(create_request=create)])
        try:
            async for resp in call:
                if resp.canceled:
                    raise RecipeError(resp.cancel_reason or (
                        "mvcc: required revision has been compacted" if resp.compact_revision
                        else "watch canceled"))
                if resp.events:
                    yield resp
            raise RecipeError("lost watcher waiting for delete")
        finally:
            call.cancel()


def prefix_end(key: bytes) -> bytes:
    """etcd's GetPrefixRangeEnd: the first key after every key starting with ``key``."""
    b = bytearray(key)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


def lease_key(prefix: bytes, lease: int) -> bytes:
    """Go's fmt.Sprintf("%s%x", prefix, leaseID): negative IDs print as -hex."""
    return prefix + (f"-{-lease:x}" if lease < 0 else f"{lease:x}").encode()


def first_create(prefix: bytes) -> rpc.RangeRequest:
    """The oldest key under prefix (clientv3.WithFirstCreate)."""
    return rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=1,
                            sort_order=rpc.RangeRequest.ASCEND,
                            sort_target=rpc.RangeRequest.CREATE)


async def wait_delete(c: SelfClient, key: bytes, rev: int) -> None:
    async with aclosing(c.watch(key, rev)) as responses:
        async for resp in responses:
            if any(ev.type == kv_pb2.Event.DELETE for ev in resp.events):
                return


async def wait_deletes(c: SelfClient, prefix: bytes, max_create_rev: int) -> rpc.ResponseHeader:
    """Wait until no key under prefix was created at or before max_create_rev (etcd's waitDeletes).

    Waiting on the newest older key only (not the oldest) avoids a thundering herd: each
    waiter is woken by its own predecessor.
    """
    while True:
        resp = await c.kv.Range(rpc.RangeRequest(
            key=prefix, range_end=prefix_end(prefix), limit=1, max_create_revision=max_create_rev,
            sort_order=rpc.RangeRequest.DESCEND, sort_target=rpc.RangeRequest.CREATE))
        if not resp.kvs:
            return resp.header
        await wait_delete(c, resp.kvs[0].key, resp.header.revision)


async def run_cleanup(coro: object) -> None:
    """Run a cleanup step to its end even though the caller's task is being cancelled."""
    task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
    except Exception as e:  # the original failure matters more than the cleanup's
        log.warning("cleanup after a failed lock/election call failed", extra={"error": str(e)})


async def fail(ctx: grpc.aio.ServicerContext, e: Exception) -> NoReturn:
    """etcd 3.4 hands every recipe/client error to gRPC as a plain error: UNKNOWN + text."""
    details = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
    await ctx.abort(grpc.StatusCode.UNKNOWN, details or "")
    raise AssertionError("unreachable")


async def lock(c: SelfClient, name: bytes, lease: int) -> tuple[rpc.ResponseHeader, bytes]:
    """concurrency.Mutex.Lock on a session with the given lease: (header, owner key)."""
    lease = await c.session_lease(lease)
    prefix = name + b"/"
    key = lease_key(prefix, lease)
    resp = await c.kv.Txn(rpc.TxnRequest(
        compare=[rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                             create_revision=0)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"", lease=lease)),
                 rpc.RequestOp(request_range=first_create(prefix))],
        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key)),
                 rpc.RequestOp(request_range=first_create(prefix))]))
    my_rev = (resp.header.revision if resp.succeeded
              else resp.responses[0].response_range.kvs[0].create_revision)
    owner = resp.responses[1].response_range.kvs
    if not owner or owner[0].create_revision == my_rev:
        return resp.header, key
    try:
        header = await wait_deletes(c, prefix, my_rev - 1)
    except BaseException:
        # Like Mutex.Lock: a waiter that gives up (error or caller gone) leaves the queue.
        await run_cleanup(c.delete(key))
        raise
    return header, key


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, server: EtcdServer, client: SelfClient | None = None) -> None:
        self.s = server
        self.c = client or SelfClient(server)

    async def Lock(self, r: pb.LockRequest, ctx: grpc.aio.ServicerContext) -> pb.LockResponse:
        try:
            header, key = await lock(self.c, r.name, r.lease)
        except (grpc.aio.AioRpcError, RecipeError) as e:
            await fail(ctx, e)
        return pb.LockResponse(header=header, key=key)

    async def Unlock(self, r: pb.UnlockRequest, ctx: grpc.aio.ServicerContext) -> pb.UnlockResponse:
        try:
            resp = await self.c.delete(r.key)
        except grpc.aio.AioRpcError as e:
            await fail(ctx, e)
        return pb.UnlockResponse(header=resp.header)
