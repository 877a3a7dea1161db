"""Informer: list + watch of a prefix into a local cache, with add/update/delete handlers.

The Kubernetes informer pattern on etcd's API. ``start()`` lists the prefix, fills
``cache`` (key -> KeyValue) and sets ``revision`` to the list's revision, then watches from
revision + 1 and applies each event to the cache before calling the handler:

* ``on_add(kv)`` for a key new to the cache,
* ``on_update(old_kv, new_kv)`` for a key already cached,
* ``on_delete(old_kv)`` when a cached key is deleted.

When the watch's revision has been compacted (or the watch fails for good) it relists
and calls the handlers for the difference between the cache and the fresh list, so the
handlers always see a consistent sequence of changes and the cache converges to the
store. Handlers may be plain functions or coroutines; they run in the informer's task,
one at a time, in revision order; an exception in a handler is logged, not fatal.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from datastore.api.mvccpb.kv_pb2 import Event, KeyValue
from datastore.client.client import Client
from datastore.client.connection import BACKOFF_MAX, BACKOFF_START
from datastore.client.errors import ClientClosedError, ClientError, CompactedError
from datastore.client.requests import KeyLike, to_bytes

log = logging.getLogger("datastore.client")
Handler = Callable[..., Awaitable[object] | object]


async def _call(h: Handler | None, *args: KeyValue) -> None:
    if h is None:
        return
    try:
        r = h(*args)
        if inspect.isawaitable(r):
            await r
    except Exception:
        # One failing handler call must not stop the informer (the cache is already
        # updated); the traceback goes to the log for the owner to fix.
        log.exception("informer handler failed", extra={
            "handler": getattr(h, "__qualname__", repr(h)),
            "key": args[-1].key.decode(errors="replace")})


class Informer:
    def __init__(self, client: Client, prefix: KeyLike, on_add: Handler | None = None,
                 on_update: Handler | None = None, on_delete: Handler | None = None) -> None:
        self.client = client
        self.prefix = to_bytes(prefix)
        self.on_add, self.on_update, self.on_delete = on_add, on_update, on_delete
        self.cache: dict[bytes, KeyValue] = {}
        self.revision = 0  # the store revision the cache reflects
        self.relists = 0  # lists done (1 for the initial one)
        self.synced = asyncio.Event()  # set after the first list was applied
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Informer:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def wait_synced(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the initial list is in the cache."""
        waiter = asyncio.ensure_future(self.synced.wait())
        assert self._task is not None, "call start() first"
        done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self._task in done:
                self._task.result()  # re-raise the informer's failure
            raise TimeoutError(f"informer {self.prefix!r} not synced within {timeout}s")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def __aenter__(self) -> Informer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        backoff = BACKOFF_START
        while True:
            try:
                await self._relist()
                backoff = BACKOFF_START
                await self._watch()
            except CompactedError as e:
                log.info("informer relisting: watch revision compacted", extra={
                    "prefix": self.prefix.decode(errors="replace"), "revision": self.revision,
                    "compact_revision": e.compact_revision})
            except ClientClosedError:
                return
            except ClientError as e:
                log.warning("informer relisting after error", extra={
                    "prefix": self.prefix.decode(errors="replace"), "error": str(e)})
                await asyncio.sleep(backoff)  # retry backoff, not synchronisation
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _relist(self) -> None:
        resp = await self.client.get(self.prefix, prefix=True)
        fresh = {kv.key: kv for kv in resp.kvs}
        for key in [k for k in self.cache if k not in fresh]:
            await _call(self.on_delete, self.cache.pop(key))
        for key, kv in fresh.items():
            old = self.cache.get(key)
            self.cache[key] = kv
            if old is None:
                await _call(self.on_add, kv)
            elif old.mod_revision != kv.mod_revision:
                await _call(self.on_update, old, kv)
        self.revision = resp.header.revision
        self.relists += 1
        self.synced.set()

    async def _watch(self) -> None:
        async with self.client.watch(self.prefix, prefix=True, start_revision=self.revision + 1) as w:
            async for batch in w:
                for ev in batch.events:
                    await self._apply(ev)
                    self.revision = ev.kv.mod_revision

    async def _apply(self, ev: Event) -> None:
        key = ev.kv.key
        if ev.type == Event.DELETE:
            old = self.cache.pop(key, None)
            if old is not None:
                await _call(self.on_delete, old)
            return
        old = self.cache.get(key)
        self.cache[key] = ev.kv
        if old is None:
            await _call(self.on_add, ev.kv)
        else:
            await _call(self.on_update, old, ev.kv)
