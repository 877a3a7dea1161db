"""Waiting for keys to be deleted (clientv3/concurrency's waitDelete / waitDeletes)."""

from __future__ import annotations

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.mvccpb.kv_pb2 import Event
from datastore.client.client import Client
from datastore.client.errors import CompactedError


async def wait_delete(client: Client, key: bytes, rev: int) -> None:
    """Return once ``key`` has a DELETE event at or after revision ``rev``."""
    async with client.watch(key, start_revision=rev) as w:
        async for batch in w:
            if any(e.type == Event.DELETE for e in batch.events):
                return


async def wait_deletes(client: Client, prefix: bytes, max_create_rev: int) -> rpc.ResponseHeader:
    """Wait until no key under ``prefix`` has a create revision <= ``max_create_rev``.

    Each round watches only the newest such key (the immediate predecessor), so waiters
    form a queue instead of all waking on every release (no thundering herd)."""
    while True:
        resp = await client.get(prefix, prefix=True, sort_order="descend", sort_target="create",
                                limit=1, max_create_revision=max_create_rev)
        if not resp.kvs:
            return resp.header
        try:
            await wait_delete(client, resp.kvs[0].key, resp.header.revision)
        except CompactedError:
            continue  # history we needed is gone: look again at what is there now


def lease_key(prefix: bytes, lease_id: int) -> bytes:
    """The key a session owns under ``prefix``: prefix + lease id in lowercase hex (Go's %x)."""
    return prefix + f"{lease_id:x}".encode()
