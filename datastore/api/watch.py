"""etcdserverpb.Watch: one bidi stream carrying many watchers.

A receive task handles create/cancel/progress requests; responses for every watcher of
the stream go through one bounded queue that the handler drains to the client. The hub
checks ``has_room`` before delivering, so a slow client parks its own watchers (they
catch up from disk later) instead of growing memory or stalling apply.

Event responses are queued as raw bytes: the hub's ``Batch`` holds the events encoded once
for every watcher, and the stream prepends the encoded header and watch id (protobuf
messages concatenate); the method's response serializer passes such bytes through.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.mvccpb.kv_pb2 import Event
from datastore.auth.grpcctx import auth_info
from datastore.mvcc.watchable import Batch, Watcher, frame_event
from datastore.server.applier import range_end
from datastore.server.config import GRPC_OVERHEAD_BYTES
from datastore.server.etcdserver import EtcdServer
from datastore.util.protowire import varint

QUEUE_LIMIT = 256  # responses buffered per stream before its watchers are parked
MERGE_LIMIT = 256 * 1024  # bytes a queued event response may grow to by merging
_CLOSE = object()
FRAGMENT_FIELD = b"\x38\x01"  # WatchResponse.fragment = true


class RawResponse(tuple):  # type: ignore[type-arg]
    """An encoded WatchResponse in two pieces (head, events), joined only when sent."""

    __slots__ = ()


class PendingEvents:
    """A queued, not yet sent event response of one watcher. While it waits, later events
    of the same watcher are appended to it (with the newer header): a stream that is not
    caught up sends one response per watcher for all its due revisions instead of one per
    revision, as etcd's responses carry several revisions, bounded by its response size
    limit. Each gRPC message costs ~30 µs of server CPU here whatever its size, so under
    load this is what keeps a stream from falling further behind."""

    __slots__ = ("chunks", "head", "size", "wid")

    def __init__(self, wid: int, head: bytes, body: bytes | memoryview) -> None:
        self.wid, self.head, self.chunks, self.size = wid, head, [body], len(head) + len(body)


def serialize_response(resp: rpc.WatchResponse | RawResponse | PendingEvents) -> bytes:
    t = type(resp)
    if t is PendingEvents:
        return resp.head + b"".join(resp.chunks)  # type: ignore[union-attr]
    if t is RawResponse:
        head, body = resp  # type: ignore[misc]
        return head + body  # type: ignore[no-any-return]
    return resp.SerializeToString()  # type: ignore[union-attr]


class HeaderCache:
    """The encoded response header field for the latest revision (shared by all streams)."""

    def __init__(self, server: EtcdServer) -> None:
        self.s = server
        self._key: tuple[int, int] = (-1, -1)
        self._val = b""

    def field(self, rev: int) -> bytes:
        key = (rev, self.s.node.term)
        if key != self._key:
            raw = self.s.header(rev).SerializeToString()
            self._key, self._val = key, b"\x0a" + varint(len(raw)) + raw
        return self._val


@functools.lru_cache(maxsize=1 << 16)
def watch_id_field(wid: int) -> bytes:
    return b"\x10" + varint(wid) if wid else b""


def go_status_text(e: errors.EtcdError) -> str:
    """A gRPC error as grpc-go prints it (etcd puts that text in watch cancel reasons)."""
    code = "".join(w.capitalize() for w in e.code.split("_"))
    return f"rpc error: code = {code} desc = {e.message}"


PERMISSION_DENIED_REASON = go_status_text(errors.ErrPermissionDenied())


class WatchStream:
    def __init__(self, server: EtcdServer, headers: HeaderCache | None = None) -> None:
        self.s = server
        self.headers = headers or HeaderCache(server)
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.watchers: dict[int, Watcher] = {}
        self._open: dict[int, PendingEvents] = {}  # queued event responses, by watch id
        # etcd's limit for a watch response is the request limit plus gRPC's overhead
        self.limit = server.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES
        self._ids = itertools.count(0)
        self._progress_pending = False

    # ---- WatchSink ---------------------------------------------------------------------
    def has_room(self) -> bool:
        return self.queue.qsize() < QUEUE_LIMIT

    def deliver(self, w: Watcher, header_rev: int, events: list[Event], compact_rev: int = 0) -> None:
        if compact_rev:
            self.watchers.pop(w.id, None)
            self._put(rpc.WatchResponse(header=self.s.header(header_rev), watch_id=w.id,
                                        compact_revision=compact_rev, canceled=True))
            return
        if events:
            self.deliver_batch(w, header_rev, Batch.of([frame_event(e) for e in events]))
            return
        self._put(rpc.WatchResponse(header=self.s.header(header_rev), watch_id=w.id))

    def deliver_batch(self, w: Watcher, header_rev: int, batch: Batch) -> None:
        head = self.headers.field(header_rev) + watch_id_field(w.id)
        limit = self.limit
        size = len(batch.blob)
        p = self._open.get(w.id)
        if p is not None and p.size + size < min(MERGE_LIMIT, limit):
            p.head = head  # the newest revision, as a multi-revision etcd response has
            p.chunks.append(batch.blob)
            p.size += size
            return
        if w.fragment and len(batch.parts) > 1 and len(head) + size >= limit:
            for part in _raw_fragments(head, batch.parts, limit):
                self._put(part)
            return
        p = self._open[w.id] = PendingEvents(w.id, head, batch.blob)
        self.queue.put_nowait(p)

    def _put(self, resp: object) -> None:
        # any other response is a barrier: later events are not merged into earlier ones
        self._open.clear()
        self.queue.put_nowait(resp)

    # ---- requests ------------------------------------------------------------------------
    def create(self, c: rpc.WatchCreateRequest) -> None:
        key = c.key or b"\x00"
        end = range_end(c.range_end)
        wsrev = self.s.kv.current_rev
        if c.watch_id:
            wid = c.watch_id
            error = "mvcc: duplicate watch ID provided on the WatchStream" if wid in self.watchers else ""
        else:
            wid = next(self._ids)
            while wid in self.watchers:
                wid = next(self._ids)
            error = ""
        if not error and end and key >= end:
            error = "mvcc: watcher range is empty"
        if error:
            self._put(rpc.WatchResponse(header=self.s.header(wsrev), watch_id=-1, created=True,
                                        canceled=True, cancel_reason=error))
            return
        filters = set(c.filters)
        w = Watcher(id=wid, key=key, end=end, sink=self, prev_kv=c.prev_kv,
                    no_put=rpc.WatchCreateRequest.NOPUT in filters,
                    no_delete=rpc.WatchCreateRequest.NODELETE in filters,
                    progress_notify=c.progress_notify, fragment=c.fragment)
        self.watchers[wid] = w
        self._put(rpc.WatchResponse(header=self.s.header(wsrev), watch_id=wid, created=True))
        self.s.hub.watch(w, c.start_revision or wsrev + 1)

    async def refusal(self, c: rpc.WatchCreateRequest, ctx: grpc.aio.ServicerContext) -> str:
        """etcd's isWatchPermitted: read permission on the whole watched range.

        Returns "" when allowed, else the cancel reason etcd gives: the gRPC error text of
        an invalid token, a stale auth revision or a missing user, else permission denied.
        Unlike etcd 3.4/3.5, a from-key watch (range_end "\\0") is checked as the open range
        it is, not as its first key alone.
        """
        try:
            ai = await auth_info(self.s, ctx)
            self.s.auth.check_range(ai, c.key or b"\x00", c.range_end)
        except (errors.ErrInvalidAuthToken, errors.ErrAuthOldRevision, errors.ErrUserEmpty) as e:
            return go_status_text(e)
        except errors.EtcdError:
            return PERMISSION_DENIED_REASON
        return ""

    def deny(self, reason: str) -> None:
        # watch id -1 as etcd 3.4 answers (3.5 echoes the requested id, usually 0)
        self._put(rpc.WatchResponse(header=self.s.header(), watch_id=-1, created=True,
                                    canceled=True, cancel_reason=reason))

    def cancel(self, wid: int) -> None:
        w = self.watchers.pop(wid, None)
        if w is None:
            return
        self.s.hub.cancel(w)
        self._put(rpc.WatchResponse(header=self.s.header(), watch_id=wid, canceled=True))

    def progress(self) -> None:
        # A progress response promises every event up to its revision was sent, so it
        # waits until none of this stream's watchers is still catching up.
        self._progress_pending = True
        self.synced()

    def synced(self) -> None:
        """Called by the hub when one of our watchers caught up."""
        if self._progress_pending and not any(
                w in self.s.hub.unsynced for w in self.watchers.values()):
            self._progress_pending = False
            self._put(rpc.WatchResponse(header=self.s.header(), watch_id=-1))

    def close(self) -> None:
        for w in self.watchers.values():
            self.s.hub.cancel(w)
        self.watchers.clear()


def _raw_fragments(head: bytes, parts: list[bytes] | tuple[bytes, ...], limit: int
                   ) -> list[RawResponse]:
    """etcd's sendFragments: each part takes events while its encoded size stays below
    ``limit`` (at least one event per part); every part but the last has fragment=true."""
    out: list[RawResponse] = []
    base = len(head) + len(FRAGMENT_FIELD)
    i, n = 0, len(parts)
    while i < n:
        size, j = base, i
        while j < n:
            size += len(parts[j])
            if j > i and size >= limit:
                break
            j += 1
        out.append(RawResponse((head + (FRAGMENT_FIELD if j < n else b""), b"".join(parts[i:j]))))
        i = j
    return out


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server
        self.headers = HeaderCache(server)

    async def Watch(self, requests: AsyncIterator[rpc.WatchRequest],
                    ctx: grpc.aio.ServicerContext) -> AsyncIterator[rpc.WatchResponse]:
        stream = WatchStream(self.s, self.headers)

        async def recv() -> None:
            # Like etcd, a client half-close keeps the stream (and its watchers) alive;
            # only an error or the client cancelling the call ends it.
            try:
                async for req in requests:
                    kind = req.WhichOneof("request_union")
                    if kind == "create_request":
                        c = req.create_request
                        if c.start_revision < 0:  # etcd 3.5.24+/3.6: never a resync from -1
                            stream.deny(errors.ErrCompacted.message)
                            continue
                        if self.s.auth.enabled:
                            reason = await stream.refusal(c, ctx)
                            if reason:
                                stream.deny(reason)
                                continue
                        stream.create(c)
                    elif kind == "cancel_request":
                        stream.cancel(req.cancel_request.watch_id)
                    elif kind == "progress_request":
                        stream.progress()
            except Exception:
                stream.queue.put_nowait(_CLOSE)
                raise

        task = asyncio.get_running_loop().create_task(recv())
        try:
            while True:
                resp = await stream.queue.get()
                if resp is _CLOSE:
                    return
                if type(resp) is PendingEvents and stream._open.get(resp.wid) is resp:
                    del stream._open[resp.wid]  # sent from here on: no more merging
                yield resp  # type: ignore[misc]
                if stream.queue.qsize() < QUEUE_LIMIT // 2 and self.s.hub.unsynced:
                    self.s.hub._wake.set()  # room again: let parked watchers catch up
        finally:
            task.cancel()
            stream.close()


def add_watch_service(service: WatchService, srv: Any) -> None:
    """Register like the generated add_WatchServicer_to_server, with a response serializer
    that sends pre-encoded responses as they are."""
    handlers = {"Watch": grpc.stream_stream_rpc_method_handler(
        service.Watch, request_deserializer=rpc.WatchRequest.FromString,
        response_serializer=serialize_response)}
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("etcdserverpb.Watch", handlers),))
    srv.add_registered_method_handlers("etcdserverpb.Watch", handlers)
