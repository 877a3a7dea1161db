"""Lease keep-alive as a background task, with the lease's loss reported to its owner.

The task renews the lease over a LeaseKeepAlive stream every TTL/3. A broken stream (member
killed, leader change, no answer within the time left) moves to the next endpoint and goes
on. The lease counts as lost when a renewal answers TTL <= 0 (expired or revoked), or when
no renewal succeeded before the last granted TTL ran out; then ``lost`` is set and
``on_lost(lease_id)`` is called once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc as stubs
from datastore.client.connection import BACKOFF_MAX, BACKOFF_START, Pool
from datastore.client.errors import ClientClosedError, ClientError

log = logging.getLogger("datastore.client")
LostCallback = Callable[[int], Awaitable[object] | object]
MIN_INTERVAL = 0.5  # seconds between renewals for very short TTLs


class KeepAlive:
    """Keeps one lease alive; ``await stop()`` ends it (the lease is not revoked)."""

    def __init__(self, pool: Pool, lease_id: int, on_lost: LostCallback | None = None) -> None:
        self.pool = pool
        self.lease_id = lease_id
        self.on_lost = on_lost
        self.lost = asyncio.Event()
        self.ttl = 0  # last TTL granted by a renewal
        self.renewals = 0
        self.renewed = asyncio.Event()  # set after each successful renewal (cleared by waiters)
        self._deadline = float("inf")  # when the lease expires if no renewal succeeds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> KeepAlive:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        backoff = BACKOFF_START
        while True:
            ep = self.pool.current
            try:
                if await self._stream(ep):
                    return
                why = "stream closed"
            except ClientClosedError:
                return
            except ClientError as e:  # logging in failed: retried like a broken stream
                why = str(e)
            except (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError) as e:
                # InvalidStateError: grpc refuses a write on a call that already ended.
                why = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) \
                    else "no answer in time" if isinstance(e, TimeoutError) else "stream ended"
            self.pool.failed(ep, why)
            if time.monotonic() >= self._deadline:
                await self._declare_lost("no renewal succeeded before the TTL ran out")
                return
            log.info("lease keep-alive retrying", extra={
                "lease": f"{self.lease_id:x}", "endpoint": ep, "reason": why})
            await asyncio.sleep(backoff)  # retry backoff, not synchronisation
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _stream(self, ep: str) -> bool:
        """Renew over one stream until it breaks; True once the lease is lost."""
        call = stubs.LeaseStub(self.pool.channel(ep)).LeaseKeepAlive(
            metadata=await self.pool.metadata())
        try:
            while True:
                await call.write(rpc.LeaseKeepAliveRequest(ID=self.lease_id))
                left = self._deadline - time.monotonic()
                wait = min(self.pool.timeout, max(left, 0.05))
                resp = await asyncio.wait_for(call.read(), wait)
                if resp is grpc.aio.EOF:
                    return False
                if resp.TTL <= 0:
                    await self._declare_lost("expired or revoked")
                    return True
                self.ttl = resp.TTL
                self._deadline = time.monotonic() + resp.TTL
                self.renewals += 1
                self.renewed.set()
                # The renewal cadence (TTL/3, as clientv3), not a synchronisation sleep.
                await asyncio.sleep(max(resp.TTL / 3, MIN_INTERVAL))
        finally:
            call.cancel()

    async def _declare_lost(self, why: str) -> None:
        log.warning("lease lost", extra={"lease": f"{self.lease_id:x}", "reason": why})
        self.lost.set()
        if self.on_lost is not None:
            r = self.on_lost(self.lease_id)
            if inspect.isawaitable(r):
                await r
