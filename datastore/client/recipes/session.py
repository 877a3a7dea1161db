"""Session: a lease kept alive for as long as the owner runs (clientv3/concurrency.Session).

Keys a Mutex or Election writes are bound to the session's lease, so they vanish when
the owner dies (its keep-alive stops and the lease expires) or closes the session.
"""

from __future__ import annotations

import asyncio

from datastore.client.client import Client
from datastore.client.errors import LeaseNotFoundError
from datastore.client.keepalive import KeepAlive

DEFAULT_TTL = 60  # seconds, as clientv3's defaultSessionTTL


class Session:
    """``async with Session(client, ttl=60) as s:`` grants a lease and keeps it alive.

    ``lease_id=...`` reuses an existing lease (to reclaim a lock or leadership after a
    restart). ``lost`` is set when the lease expired or was revoked behind our back."""

    def __init__(self, client: Client, ttl: int = DEFAULT_TTL, lease_id: int = 0) -> None:
        self.client = client
        self.ttl = ttl if ttl > 0 else DEFAULT_TTL
        self._lease_id = lease_id
        self.lost = asyncio.Event()
        self._keepalive: KeepAlive | None = None

    @property
    def lease_id(self) -> int:
        if not self._lease_id:
            raise RuntimeError("session not open: use 'async with Session(...)' or await open()")
        return self._lease_id

    async def open(self) -> Session:
        if not self._lease_id:
            self._lease_id = (await self.client.lease_grant(self.ttl)).ID
        if self._keepalive is None:
            self._keepalive = self.client.keep_alive(self._lease_id, on_lost=lambda _id: self.lost.set())
        return self

    async def orphan(self) -> None:
        """Stop renewing without revoking: the lease (and our keys) expire after the TTL."""
        if self._keepalive is not None:
            await self._keepalive.stop()
            self._keepalive = None

    async def close(self) -> None:
        """Stop renewing and revoke the lease, deleting every key bound to it."""
        await self.orphan()
        if self._lease_id:
            try:
                await self.client.lease_revoke(self._lease_id)
            except LeaseNotFoundError:
                pass  # already expired: nothing left to delete

    async def __aenter__(self) -> Session:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
