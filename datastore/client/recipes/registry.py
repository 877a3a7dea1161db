"""Service registration and discovery on top of leases and a prefix watch.

Each live instance owns ``<prefix>/<service>/<instance>`` = value, bound to its own lease
kept alive while it runs, so a crashed instance disappears after its TTL. ``discover``
lists the live instances; ``watch`` yields the whole live set each time it changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from datastore.api.mvccpb.kv_pb2 import Event
from datastore.client.client import Client
from datastore.client.errors import CompactedError, LeaseNotFoundError
from datastore.client.keepalive import KeepAlive
from datastore.client.requests import KeyLike, to_bytes


@dataclass
class Registration:
    """One registered instance; ``await deregister()`` removes it at once."""

    client: Client
    key: bytes
    lease_id: int
    keepalive: KeepAlive

    @property
    def lost(self) -> asyncio.Event:
        return self.keepalive.lost

    async def deregister(self) -> None:
        await self.keepalive.stop()
        try:
            await self.client.lease_revoke(self.lease_id)
        except LeaseNotFoundError:
            pass


class ServiceRegistry:
    def __init__(self, client: Client, prefix: KeyLike = "/services") -> None:
        self.client = client
        self.prefix = to_bytes(prefix).rstrip(b"/") + b"/"

    def _service_prefix(self, service: str) -> bytes:
        return self.prefix + service.encode() + b"/"

    async def register(self, service: str, instance: str, value: KeyLike,
                       ttl: int = 10) -> Registration:
        lease = (await self.client.lease_grant(ttl)).ID
        key = self._service_prefix(service) + instance.encode()
        await self.client.put(key, value, lease=lease)
        return Registration(self.client, key, lease, self.client.keep_alive(lease))

    async def discover(self, service: str) -> dict[str, bytes]:
        """Live instances of ``service``: instance name -> value."""
        live, _ = await self._list(service)
        return live

    async def _list(self, service: str) -> tuple[dict[str, bytes], int]:
        pfx = self._service_prefix(service)
        resp = await self.client.get(pfx, prefix=True)
        return {kv.key[len(pfx):].decode(): kv.value for kv in resp.kvs}, resp.header.revision

    async def watch(self, service: str) -> AsyncIterator[dict[str, bytes]]:
        """Yield the live set now, then again after every change to it."""
        pfx = self._service_prefix(service)
        while True:
            live, rev = await self._list(service)
            yield dict(live)
            try:
                async with self.client.watch(pfx, prefix=True, start_revision=rev + 1) as w:
                    async for batch in w:
                        for ev in batch.events:
                            name = ev.kv.key[len(pfx):].decode()
                            if ev.type == Event.DELETE:
                                live.pop(name, None)
                            else:
                                live[name] = ev.kv.value
                        yield dict(live)
            except CompactedError:
                continue  # relist
