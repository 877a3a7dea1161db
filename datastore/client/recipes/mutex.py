"""Mutex: a distributed lock, wire-compatible with clientv3/concurrency.Mutex and ``etcdctl lock``.

Layout: each contender puts ``<name>/<lease id hex>`` (empty value, bound to its session
lease); the key with the lowest create revision holds the lock. A waiter watches only
the newest key created before its own and re-checks when it goes, so a Python holder
and an ``etcdctl lock`` holder of the same name exclude each other.
"""

from __future__ import annotations

import asyncio

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.client.errors import ClientError, LeaseLostError, LockTimeoutError
from datastore.client.recipes.session import Session
from datastore.client.recipes.waiting import lease_key, wait_deletes
from datastore.client.requests import KeyLike, to_bytes
from datastore.client.txn import Compare, op_get, op_put


class LockedError(ClientError):
    """try_lock(): another session holds the lock."""

    def __init__(self, name: bytes) -> None:
        import grpc
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, f"mutex: {name!r} locked by another session")


def owner_op(prefix: bytes) -> rpc.RequestOp:
    """The oldest key under prefix: the current holder (clientv3's WithFirstCreate)."""
    return op_get(prefix, prefix=True, sort_order="ascend", sort_target="create", limit=1)


class Mutex:
    """``async with Mutex(session, "/my-lock"):`` ... or ``await m.lock()`` / ``await m.unlock()``."""

    def __init__(self, session: Session, name: KeyLike) -> None:
        self.session = session
        self.client = session.client
        self.prefix = to_bytes(name) + b"/"
        self.key = b""  # our key while we hold or wait for the lock
        self.rev = -1  # its create revision
        self.header: rpc.ResponseHeader | None = None

    async def _try_acquire(self) -> rpc.TxnResponse:
        lease = self.session.lease_id
        self.key = lease_key(self.prefix, lease)
        resp = await self.client.txn(
            compare=[Compare.create_revision(self.key) == 0],
            success=[op_put(self.key, b"", lease=lease), owner_op(self.prefix)],
            failure=[op_get(self.key), owner_op(self.prefix)])
        self.rev = resp.header.revision
        if not resp.succeeded:  # our session already has a key here: reuse it
            self.rev = resp.responses[0].response_range.kvs[0].create_revision
        return resp

    def _is_holder(self, resp: rpc.TxnResponse) -> bool:
        owner = resp.responses[1].response_range.kvs
        return not owner or owner[0].create_revision == self.rev

    async def try_lock(self) -> None:
        """Take the lock if free; raise LockedError (after removing our key) otherwise."""
        resp = await self._try_acquire()
        if self._is_holder(resp):
            self.header = resp.header
            return
        await self.client.delete(self.key)
        self.key, self.rev = b"", -1
        raise LockedError(self.prefix[:-1])

    async def lock(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until we hold the lock (at most ``timeout`` seconds: LockTimeoutError)."""
        resp = await self._try_acquire()
        if self._is_holder(resp):
            self.header = resp.header
            return
        try:
            await asyncio.wait_for(wait_deletes(self.client, self.prefix, self.rev - 1), timeout)
        except BaseException as e:
            # Give up our place in the queue, whatever stopped the wait (timeout, cancel).
            await asyncio.shield(self._release())
            if isinstance(e, TimeoutError):
                raise LockTimeoutError(f"mutex {self.prefix[:-1]!r} not acquired in {timeout}s") from None
            raise
        # Our key must still exist: if the session expired meanwhile, we do not hold it.
        got = await self.client.get(self.key)
        if not got.kvs:
            self.key, self.rev = b"", -1
            raise LeaseLostError(self.session.lease_id, "mutex: session is expired")
        self.header = got.header

    async def _release(self) -> None:
        if self.key:
            await self.client.delete(self.key)
        self.key, self.rev = b"", -1

    async def unlock(self) -> None:
        await self._release()

    def is_owner(self) -> rpc.Compare:
        """A txn guard true only while we still hold the lock (fence writes with it)."""
        return Compare.create_revision(self.key) == self.rev

    async def __aenter__(self) -> Mutex:
        await self.lock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unlock()
