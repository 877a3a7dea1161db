"""STM: optimistic transactions retried on conflict (clientv3/concurrency's STM).

    async def transfer(stm):
        a = int(await stm.get("a") or 0)
        stm.put("a", str(a - 1))
    await run_stm(client, transfer)

``fn`` reads through ``stm.get`` and buffers writes with ``stm.put`` / ``stm.delete``; on
commit, one txn applies the writes only if nothing it read (and, under the default
serializable-snapshot isolation, nothing it writes) changed since; otherwise ``fn`` runs
again on fresh data. Exceptions raised by ``fn`` abort without writing.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.client.client import Client
from datastore.client.errors import ClientError
from datastore.client.requests import KeyLike, to_bytes
from datastore.client.txn import Compare, op_delete, op_get, op_put


class Isolation(enum.Enum):
    SERIALIZABLE_SNAPSHOT = "serializable_snapshot"  # reads at one revision; write conflicts too
    SERIALIZABLE = "serializable"  # reads at one revision; read conflicts only
    REPEATABLE_READS = "repeatable_reads"  # each key read once; read conflicts only
    READ_COMMITTED = "read_committed"  # no conflict checks at all


class STMConflictError(ClientError):
    """run_stm gave up after ``max_attempts`` conflicting attempts."""


class STM:
    """The view ``fn`` gets: reads are recorded, writes buffered until commit."""

    def __init__(self, client: Client, isolation: Isolation) -> None:
        self.client = client
        self.isolation = isolation
        self.reads: dict[bytes, rpc.RangeResponse] = {}
        self.writes: dict[bytes, rpc.RequestOp] = {}
        self._values: dict[bytes, bytes | None] = {}
        self._base_rev = 0  # revision of the first read (snapshot isolations)

    async def get(self, key: KeyLike) -> bytes | None:
        """The key's value as this transaction sees it (None when absent)."""
        k = to_bytes(key)
        if k in self._values:
            return self._values[k]
        if k not in self.reads:
            snapshot = self.isolation in (Isolation.SERIALIZABLE_SNAPSHOT, Isolation.SERIALIZABLE)
            # Linearizable even at a fixed revision: a lagging member could not serve it.
            resp = await self.client.get(k, revision=self._base_rev if snapshot else 0)
            if not self._base_rev:
                self._base_rev = resp.header.revision
            self.reads[k] = resp
        r = self.reads[k]
        return r.kvs[0].value if r.kvs else None

    async def rev(self, key: KeyLike) -> int:
        """The mod revision of the key as read (0 when absent)."""
        await self.get(key)
        r = self.reads.get(to_bytes(key))
        return r.kvs[0].mod_revision if r is not None and r.kvs else 0

    def put(self, key: KeyLike, value: KeyLike, lease: int = 0) -> None:
        k = to_bytes(key)
        self.writes[k] = op_put(k, value, lease=lease)
        self._values[k] = to_bytes(value)

    def delete(self, key: KeyLike) -> None:
        k = to_bytes(key)
        self.writes[k] = op_delete(k)
        self._values[k] = None

    def conflicts(self) -> list[rpc.Compare]:
        if self.isolation is Isolation.READ_COMMITTED:
            return []
        cmps = [Compare.mod_revision(k) == (r.kvs[0].mod_revision if r.kvs else 0)
                for k, r in self.reads.items()]
        if self.isolation is Isolation.SERIALIZABLE_SNAPSHOT and self._base_rev:
            cmps += [Compare.mod_revision(k) < self._base_rev + 1 for k in self.writes]
        return cmps

    async def commit(self) -> rpc.TxnResponse:
        return await self.client.txn(compare=self.conflicts(), success=list(self.writes.values()),
                                     failure=[op_get(k) for k in self.reads])


async def run_stm(client: Client, fn: Callable[[STM], Awaitable[object]], *,
                  isolation: Isolation = Isolation.SERIALIZABLE_SNAPSHOT,
                  max_attempts: int | None = None) -> rpc.TxnResponse:
    """Run ``fn`` in a fresh STM until its commit succeeds; returns the commit's TxnResponse."""
    attempt = 0
    while True:
        attempt += 1
        stm = STM(client, isolation)
        await fn(stm)
        resp = await stm.commit()
        if resp.succeeded:
            return resp
        if max_attempts is not None and attempt >= max_attempts:
            import grpc
            raise STMConflictError(grpc.StatusCode.ABORTED,
                                   f"stm: still conflicting after {attempt} attempts")
