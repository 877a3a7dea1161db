"""The watch hub: feeds watchers from apply, catches slow or late ones up from disk.

Watchers are *synced* (caught up; fed directly by ``notify`` as transactions apply) or
*unsynced* (behind: started from a past revision, or their stream's queue was full).
A background task replays history for unsynced watchers from the ``key`` column family,
which is ordered by revision, a chunk at a time and only while their stream has room, so
one slow client never stalls apply or other watchers. A watcher that needs history
older than the compaction point is cancelled with ``compact_revision`` set, as in etcd.

Everything runs on the event loop thread; there are no locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from datastore.api.mvccpb.kv_pb2 import Event, KeyValue
from datastore.mvcc.kvstore import KVStore

CATCH_UP_REVISIONS = 1000  # revisions replayed per unsynced watcher per pass


class WatchSink(Protocol):
    """A watch stream's outgoing side (implemented by the gRPC layer)."""

    def has_room(self) -> bool: ...

    def deliver(self, w: Watcher, header_rev: int, events: list[Event],
                compact_rev: int = 0) -> None: ...

    def synced(self) -> None:
        """One of this sink's watchers has caught up."""


@dataclass(eq=False, slots=True)
class Watcher:
    id: int
    key: bytes
    end: bytes | None  # index convention: None single key, b"" open-ended
    sink: WatchSink
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False
    progress_notify: bool = False
    fragment: bool = False
    next_rev: int = 0  # the first revision this watcher still has to see
    sent_since_progress: bool = field(default=False)

    def matches(self, key: bytes) -> bool:
        if self.end is None:
            return key == self.key
        return key >= self.key and (not self.end or key < self.end)

    def filtered(self, events: Iterable[Event]) -> list[Event]:
        if not (self.no_put or self.no_delete):
            return list(events)
        return [e for e in events
                if not ((self.no_put and e.type == Event.PUT)
                        or (self.no_delete and e.type == Event.DELETE))]


class WatchHub:
    def __init__(self, kv: KVStore) -> None:
        self.kv = kv
        self._by_key: dict[bytes, set[Watcher]] = {}
        self._ranges: set[Watcher] = set()
        self.unsynced: set[Watcher] = set()
        self._wake = asyncio.Event()

    # ---- registration ---------------------------------------------------------------
    def watch(self, w: Watcher, start_rev: int) -> None:
        cur = self.kv.current_rev
        if start_rev == 0 or start_rev > cur:
            w.next_rev = max(cur + 1, start_rev)
            self._add_synced(w)
        else:
            w.next_rev = start_rev
            self.unsynced.add(w)
            self._wake.set()

    def cancel(self, w: Watcher) -> None:
        self._remove_synced(w)
        self.unsynced.discard(w)

    def _add_synced(self, w: Watcher) -> None:
        if w.end is None:
            self._by_key.setdefault(w.key, set()).add(w)
        else:
            self._ranges.add(w)

    def _remove_synced(self, w: Watcher) -> None:
        if w.end is None:
            ws = self._by_key.get(w.key)
            if ws is not None:
                ws.discard(w)
                if not ws:
                    del self._by_key[w.key]
        else:
            self._ranges.discard(w)

    def synced_watchers(self) -> Iterable[Watcher]:
        for ws in self._by_key.values():
            yield from ws
        yield from self._ranges

    # ---- fed by apply ---------------------------------------------------------------
    def notify(self, rev: int, events: list[Event]) -> None:
        """Deliver one transaction's events (all at ``rev``) to synced watchers."""
        if not (self._by_key or self._ranges):
            return
        batches: dict[Watcher, list[Event]] = {}
        for ev in events:
            key = ev.kv.key
            for w in self._by_key.get(key, ()):
                batches.setdefault(w, []).append(ev)
            for w in self._ranges:
                if w.matches(key):
                    batches.setdefault(w, []).append(ev)
        for w, evs in batches.items():
            if rev < w.next_rev:
                continue  # watching from a future revision
            if w.sink.has_room():
                self._send(w, rev, evs)
                w.next_rev = rev + 1
            else:  # slow consumer: park it; the sync task replays from disk later
                self._remove_synced(w)
                w.next_rev = rev
                self.unsynced.add(w)
                self._wake.set()

    def _send(self, w: Watcher, header_rev: int, evs: list[Event]) -> None:
        evs = w.filtered(evs)
        if not evs:
            return
        if w.prev_kv:
            evs = [self._with_prev(e) for e in evs]
        w.sent_since_progress = True
        w.sink.deliver(w, header_rev, evs)

    def _with_prev(self, ev: Event) -> Event:
        """Attach the key's value just before the event (etcd skips creations)."""
        if ev.type == Event.PUT and ev.kv.version == 1:
            return ev
        prev: KeyValue | None = self.kv.kv_at(ev.kv.key, ev.kv.mod_revision - 1)
        if prev is None:
            return ev
        out = Event()
        out.CopyFrom(ev)
        out.prev_kv.CopyFrom(prev)
        return out

    # ---- catching up ------------------------------------------------------------------
    async def run(self) -> None:
        """Background task: replay history to unsynced watchers until they are synced."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            progressed = self.sync_once()
            if self.unsynced:
                # give streams time to drain before the next pass
                await asyncio.sleep(0 if progressed else 0.01)
                self._wake.set()

    def sync_once(self) -> bool:
        progressed = False
        for w in list(self.unsynced):
            if not w.sink.has_room():
                continue
            progressed = True
            kv = self.kv
            if w.next_rev < kv.compact_rev:
                self.unsynced.discard(w)
                w.sink.deliver(w, 0, [], compact_rev=kv.compact_rev)
                continue
            cur = kv.current_rev
            hi = min(cur, w.next_rev + CATCH_UP_REVISIONS - 1)
            evs = [ev for _, ev in kv.events_since(w.next_rev, hi) if w.matches(ev.kv.key)]
            if evs:
                self._send(w, cur, evs)
            w.next_rev = hi + 1
            if hi >= cur:
                self.unsynced.discard(w)
                self._add_synced(w)
                w.sink.synced()
        return progressed
