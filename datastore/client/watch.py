"""A watch that survives member failures without losing or repeating events.

The watch remembers the revision it needs next: the created response's revision + 1
when it started "from now", then the last delivered event's mod_revision + 1 (or a
progress notification's revision + 1). When the stream breaks (member killed, connection
reset, no leader), it re-creates the watch on the next endpoint from that revision, and
drops any event older than it, so the consumer sees each event exactly once, in order.

A start revision that was compacted away cannot be served: the iterator raises
``CompactedError`` (with ``compact_revision``) and ends; the usual answer is to re-list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc as stubs
from datastore.api.mvccpb.kv_pb2 import Event
from datastore.client.connection import (
    BACKOFF_MAX,
    BACKOFF_START,
    Metadata,
    Pool,
    moves_on,
    token_refused,
)
from datastore.client.errors import ClientError, CompactedError
from datastore.client.requests import KeyLike, key_range

log = logging.getLogger("datastore.client")
_FILTERS = {"noput": rpc.WatchCreateRequest.NOPUT, "nodelete": rpc.WatchCreateRequest.NODELETE}
_END = object()
# Stream errors after which re-creating the watch elsewhere is the right move.
_RESUMABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass
class WatchBatch:
    """Events of one watch response (all events of a revision arrive in one batch)."""

    events: list[Event]
    revision: int  # the responding member's revision (header.revision)
    progress: bool = False  # a progress notification: no events, all up to ``revision`` sent
    responses: list[rpc.WatchResponse] = field(default_factory=list, repr=False)


class Watch:
    """Async iterator of WatchBatch; ``await cancel()`` to stop. Use from one task."""

    def __init__(self, pool: Pool, key: KeyLike, *, prefix: bool = False,
                 range_end: KeyLike | None = None, start_revision: int = 0, prev_kv: bool = False,
                 progress_notify: bool = False, filters: Iterable[str | int] = ()) -> None:
        self.pool = pool
        self.key, self.range_end = key_range(key, prefix, range_end)
        self.next_rev = start_revision  # 0: "from now", fixed by the created response
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        self.filters = [_FILTERS[f.lower()] if isinstance(f, str) else f for f in filters]
        self.created = asyncio.Event()  # set once the first watch is registered on a member
        self.resumes = 0  # how many times the stream was re-created (for observability)
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = False
        self._call: grpc.aio.StreamStreamCall | None = None
        self._served = False  # the current stream got its watch created
        self._progress_requested = False
        self._relogged = False  # the last stream was re-created for a refused token
        self._task = asyncio.get_running_loop().create_task(self._run())

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchBatch:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # later calls end too
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._queue.put_nowait(_END)
            raise item
        return item  # type: ignore[return-value]

    async def wait_created(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until the watch is registered (events after this point are not missed)."""
        await asyncio.wait_for(self.created.wait(), timeout)

    async def request_progress(self) -> bool:
        """Ask the member for a progress notification: the next batch with ``progress``
        tells the revision up to which every event was delivered. False when no stream
        is up right now (ask again later)."""
        call = self._call
        if call is None or not self.created.is_set():
            return False
        self._progress_requested = True
        try:
            await call.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return False
        return True

    async def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._queue.put_nowait(_END)

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()

    def _create_request(self) -> rpc.WatchRequest:
        return rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=self.key, range_end=self.range_end, start_revision=self.next_rev,
            prev_kv=self.prev_kv, progress_notify=self.progress_notify,
            filters=self.filters))  # type: ignore[arg-type]

    async def _run(self) -> None:
        backoff = BACKOFF_START
        try:
            while not self._cancelled:
                ep = self.pool.current
                self._served = False
                try:
                    if await self._stream(ep):
                        return
                    if self._relogged:
                        continue  # the same member, with a fresh token
                    why = "stream closed by the server"
                    backoff = BACKOFF_START
                except asyncio.InvalidStateError:  # grpc refuses a write on an ended call
                    why = "stream ended"
                except grpc.aio.AioRpcError as e:
                    if self._cancelled:
                        return
                    if e.code() not in _RESUMABLE and not moves_on(e):
                        raise ClientError(e.code(), e.details() or "", ep) from None
                    why = f"{e.code().name}: {e.details()}"
                self.pool.failed(ep, why)
                if self._served:  # the stream worked for a while: retry quickly again
                    backoff = BACKOFF_START
                self.resumes += 1
                log.info("watch resuming", extra={"endpoint": ep, "next_rev": self.next_rev,
                                                  "reason": why})
                await asyncio.sleep(backoff)  # retry backoff, not synchronisation
                backoff = min(backoff * 2, BACKOFF_MAX)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._queue.put_nowait(e)
        finally:
            if self._call is not None:
                self._call.cancel()

    async def _stream(self, ep: str) -> bool:
        """Run one stream on ``ep``; True when the watch is over (error or compaction queued)."""
        md = await self.pool.metadata()
        call = stubs.WatchStub(self.pool.channel(ep)).Watch(metadata=md)
        self._call = call
        try:
            await call.write(self._create_request())
            fragments: list[rpc.WatchResponse] = []
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return False
                if resp.created and not resp.canceled:
                    self._served = True
                    if self.next_rev == 0:
                        self.next_rev = resp.header.revision + 1
                    self.created.set()
                    continue
                if resp.canceled or resp.compact_revision:
                    return self._canceled(resp, ep, md)
                if resp.fragment:
                    fragments.append(resp)
                    continue
                parts = [*fragments, resp]
                fragments = []
                self._deliver(parts)
        finally:
            call.cancel()
            self._call = None

    def _canceled(self, resp: rpc.WatchResponse, ep: str, md: Metadata) -> bool:
        if resp.compact_revision:
            self._queue.put_nowait(CompactedError(resp.compact_revision, endpoint=ep))
            return True
        reason = resp.cancel_reason or "watch canceled by the server"
        if "no leader" in reason:
            return False  # resume on another member
        if (resp.created and not self._relogged and token_refused(reason)
                and self.pool.forget_token(md)):
            self._relogged = True  # once per refusal: a fresh token that fails is an error
            return False  # re-created at once with a fresh token
        self._relogged = False
        self._queue.put_nowait(ClientError(grpc.StatusCode.CANCELLED, reason, ep))
        return True

    def _deliver(self, parts: list[rpc.WatchResponse]) -> None:
        last = parts[-1]
        events = [e for p in parts for e in p.events if e.kv.mod_revision >= self.next_rev]
        had_events = any(p.events for p in parts)
        if events:
            self.next_rev = events[-1].kv.mod_revision + 1
            self._queue.put_nowait(WatchBatch(events, last.header.revision, False, parts))
        elif not had_events:
            # A progress notification: everything up to this revision was sent.
            self.next_rev = max(self.next_rev, last.header.revision + 1)
            if self.progress_notify or self._progress_requested:
                self._progress_requested = False
                self._queue.put_nowait(WatchBatch([], last.header.revision, True, parts))
