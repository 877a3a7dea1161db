"""Election: leader election, wire-compatible with clientv3/concurrency.Election and ``etcdctl elect``.

Layout: each candidate puts ``<name>/<lease id hex>`` = its proposal, bound to its session
lease; the key with the lowest create revision is the leader and its value the leader's
proposal. Candidates queue behind their predecessor as in Mutex. The leader fences its
writes with ``Compare.create_revision(e.key) == e.rev``: once it lost leadership (its
key deleted or its lease expired), such a txn fails instead of clobbering the new leader.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.mvccpb.kv_pb2 import Event, KeyValue
from datastore.client.errors import CompactedError, ElectionNotLeaderError, LockTimeoutError, NoLeaderError
from datastore.client.recipes.mutex import owner_op
from datastore.client.recipes.session import Session
from datastore.client.recipes.waiting import lease_key, wait_deletes
from datastore.client.requests import KeyLike, to_bytes
from datastore.client.txn import Compare, op_delete, op_get, op_put


class Election:
    def __init__(self, session: Session, name: KeyLike) -> None:
        self.session = session
        self.client = session.client
        self.prefix = to_bytes(name) + b"/"
        self.key = b""  # our key once we campaigned
        self.rev = 0  # its create revision
        self.header: rpc.ResponseHeader | None = None
        self._campaigning = False

    @classmethod
    def resume(cls, session: Session, name: KeyLike, key: bytes, rev: int) -> Election:
        """Act as the leader (or candidate) owning ``key`` created at ``rev`` (Go's
        ResumeElection), e.g. after a restart that kept the session's lease."""
        e = cls(session, name)
        e.key, e.rev, e._campaigning = key, rev, True
        return e

    async def campaign(self, value: KeyLike, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Become a candidate and wait until elected (at most ``timeout``: LockTimeoutError).

        A candidate whose session already has a key here (e.g. after a restart with the
        same lease) resumes it, proclaiming ``value`` if it differs."""
        val = to_bytes(value)
        lease = self.session.lease_id
        key = lease_key(self.prefix, lease)
        resp = await self.client.txn(compare=[Compare.create_revision(key) == 0],
                                     success=[op_put(key, val, lease=lease)], failure=[op_get(key)])
        self.key, self.rev, self._campaigning = key, resp.header.revision, True
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            self.rev = kv.create_revision
            if kv.value != val:
                try:
                    await self.proclaim(val)
                except BaseException:
                    await self.resign()
                    raise
        try:
            await asyncio.wait_for(wait_deletes(self.client, self.prefix, self.rev - 1), timeout)
        except BaseException as e:
            await asyncio.shield(self.resign())
            if isinstance(e, TimeoutError):
                raise LockTimeoutError(f"election {self.prefix[:-1]!r} not won in {timeout}s") from None
            raise
        self.header = resp.header

    async def proclaim(self, value: KeyLike) -> None:
        """Change the leader's value without a new election (ElectionNotLeaderError if not leader)."""
        if not self._campaigning:
            raise ElectionNotLeaderError()
        resp = await self.client.txn(
            compare=[Compare.create_revision(self.key) == self.rev],
            success=[op_put(self.key, value, lease=self.session.lease_id)])
        if not resp.succeeded:
            self.key = b""
            raise ElectionNotLeaderError()
        self.header = resp.header

    async def resign(self) -> None:
        """Step down (or leave the queue): delete our key if it is still ours."""
        if not self._campaigning:
            return
        resp = await self.client.txn(compare=[Compare.create_revision(self.key) == self.rev],
                                     success=[op_delete(self.key)])
        self.header = resp.header
        self.key, self._campaigning = b"", False

    def is_leader_cmp(self) -> rpc.Compare:
        """A txn guard true only while we are still the leader we were elected as."""
        return Compare.create_revision(self.key) == self.rev

    async def leader(self) -> KeyValue:
        """The current leader's key and value; NoLeaderError when nobody is elected."""
        resp = await self.client.get(self.prefix, prefix=True, sort_order="ascend",
                                     sort_target="create", limit=1)
        if not resp.kvs:
            raise NoLeaderError("election: no leader")
        return resp.kvs[0]

    async def observe(self) -> AsyncIterator[KeyValue]:
        """Yield the leader's KeyValue each time leadership or the proclaimed value changes.

        Like clientv3's Observe, it may skip intermediate values but always yields the latest."""
        while True:
            resp = await self.client.txn(success=[owner_op(self.prefix)])
            rev = resp.header.revision
            owner = resp.responses[0].response_range.kvs
            kv = owner[0] if owner else None
            try:
                if kv is None:
                    kv, rev = await self._first_put(rev)
                yield kv
                async with self.client.watch(kv.key, start_revision=rev + 1) as w:
                    async for batch in w:
                        deleted = False
                        for ev in batch.events:
                            if ev.type == Event.DELETE:
                                deleted = True
                                break
                            yield ev.kv
                        if deleted:
                            break
            except CompactedError:
                continue  # start over from a fresh read

    async def _first_put(self, rev: int) -> tuple[KeyValue, int]:
        async with self.client.watch(self.prefix, prefix=True, start_revision=rev) as w:
            async for batch in w:
                for ev in batch.events:
                    if ev.type == Event.PUT:
                        return ev.kv, ev.kv.mod_revision
        raise NoLeaderError("election: watch ended")
