"""The watch hub: feeds watchers from apply, catches slow or late ones up from disk.

Watchers are *synced* (caught up; fed directly by ``notify`` as transactions apply) or
*unsynced* (behind: started from a past revision, or their stream's queue was full).
A background task catches unsynced watchers up from the ``key`` column family, which is
ordered by revision: each pass takes the unsynced watchers whose stream has room (at most
``CATCH_UP_WATCHERS``), reads the window of ``CATCH_UP_REVISIONS`` revisions holding the
smallest revision any of them still needs, and hands each watcher the window's events in
its key range from its own revision on (etcd's watchableStore.syncWatchers). Windows
are aligned and the last few are kept with their encodings, so later passes (for
watchers whose streams drained later) reuse them: a thousand late watchers cost one read
per window. One slow client never stalls apply or other watchers, and no pass is
longer than one window for a bounded number of watchers.

Fan-out encodes each event once: watchers get the same ``Batch`` of protobuf-encoded
``events`` fields (one per key range and prev_kv/filter variant), and the stream prepends
only its header and watch id (protobuf messages concatenate).

A watcher that needs history older than the compaction point is cancelled with
``compact_revision`` set, as in etcd. Everything runs on the event loop thread; no locks.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from datastore.api.mvccpb.kv_pb2 import Event, KeyValue
from datastore.mvcc.kvstore import KVStore
from datastore.util.protowire import varint

CATCH_UP_REVISIONS = 1000  # revisions read per catch-up pass
CATCH_UP_WATCHERS = 1024  # watchers served per catch-up pass (bounds one pass's work)
KEEP_WINDOWS = 4  # catch-up reads kept for the next passes
EVENTS_TAG = b"\x5a"  # WatchResponse field 11 (events), length-delimited


Variant = tuple[bool, bool, bool]  # prev_kv, no_put, no_delete


def frame_event(ev: Event) -> bytes:
    """One event as a WatchResponse ``events`` field."""
    raw = ev.SerializeToString()
    return EVENTS_TAG + varint(len(raw)) + raw


@dataclass(slots=True)
class Batch:
    """Encoded ``events`` fields shared by every watcher that gets exactly these events."""

    parts: Sequence[bytes]  # one framed event each (fragmenting splits between them)
    blob: bytes | memoryview  # the parts joined

    @classmethod
    def of(cls, parts: list[bytes]) -> Batch:
        return cls(parts, b"".join(parts))


class WatchSink(Protocol):
    """A watch stream's outgoing side (implemented by the gRPC layer)."""

    def has_room(self) -> bool: ...

    def deliver(self, w: Watcher, header_rev: int, events: list[Event],
                compact_rev: int = 0) -> None: ...

    def deliver_batch(self, w: Watcher, header_rev: int, batch: Batch) -> None: ...

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
    variant: Variant = field(init=False)  # what changes its encoded events

    def __post_init__(self) -> None:
        self.variant = (self.prev_kv, self.no_put, self.no_delete)


def _in_range(key: bytes, lo: bytes, end: bytes) -> bool:
    return key >= lo and (not end or key < end)


class _Encoder:
    """Encodes a run of events lazily, each at most once per form (plain / with prev_kv)."""

    def __init__(self, kv: KVStore, events: Sequence[Event]) -> None:
        self.kv = kv
        self.events = events
        self._plain: dict[int, bytes] = {}
        self._prev: dict[int, bytes] = {}

    def part(self, i: int, prev_kv: bool) -> bytes:
        cache = self._prev if prev_kv else self._plain
        got = cache.get(i)
        if got is None:
            ev = self.events[i]
            got = cache[i] = frame_event(with_prev(self.kv, ev) if prev_kv else ev)
        return got

    def batch(self, idx: Iterable[int], variant: Variant) -> tuple[list[int], list[bytes]]:
        """The events at ``idx`` this variant keeps, and their encodings."""
        prev_kv, no_put, no_delete = variant
        evs = self.events
        keep = [i for i in idx if not ((no_put and evs[i].type == Event.PUT)
                                       or (no_delete and evs[i].type == Event.DELETE))]
        return keep, [self.part(i, prev_kv) for i in keep]


def with_prev(kv: KVStore, ev: Event) -> Event:
    """The event with the key's value just before it attached (etcd skips creations)."""
    if ev.type == Event.PUT and ev.kv.version == 1:
        return ev
    prev: KeyValue | None = kv.kv_at(ev.kv.key, ev.kv.mod_revision - 1)
    if prev is None:
        return ev
    out = Event()
    out.CopyFrom(ev)
    out.prev_kv.CopyFrom(prev)
    return out


class _Window:
    """One read of history for catch-up, and its encodings per key range and variant."""

    def __init__(self, kv: KVStore, hi: int, revs: list[int], events: list[Event]) -> None:
        self.hi, self.revs, self.events = hi, revs, events
        self.enc = _Encoder(kv, events)
        self.by_key: dict[bytes, list[int]] = {}
        for i, ev in enumerate(events):
            self.by_key.setdefault(ev.kv.key, []).append(i)
        self.ranges: dict[tuple[bytes, bytes], list[int]] = {}
        # per (key or range, variant): revisions kept, encoded events, joined, offsets
        self.cache: dict[tuple[object, Variant],
                         tuple[list[int], list[bytes], bytes, list[int]]] = {}

    def batch_for(self, w: Watcher) -> tuple[list[int], list[bytes], bytes, list[int]]:
        gk: object
        if w.end is None:
            gk = w.key
            idx = self.by_key.get(w.key, [])
        else:
            gk = (w.key, w.end)
            got = self.ranges.get(gk)  # type: ignore[arg-type]
            if got is None:
                got = self.ranges[gk] = [  # type: ignore[index]
                    i for i, ev in enumerate(self.events) if _in_range(ev.kv.key, w.key, w.end)]
            idx = got
        ck = (gk, w.variant)
        entry = self.cache.get(ck)
        if entry is None:
            keep, parts = self.enc.batch(idx, w.variant)
            offsets = [0]
            for p in parts:
                offsets.append(offsets[-1] + len(p))
            entry = self.cache[ck] = ([self.revs[i] for i in keep], parts, b"".join(parts),
                                      offsets)
        return entry


class WatchHub:
    def __init__(self, kv: KVStore) -> None:
        self.kv = kv
        self._by_key: dict[bytes, set[Watcher]] = {}
        # range watchers grouped by their range, so an event is matched once per range
        self._ranges: dict[tuple[bytes, bytes], set[Watcher]] = {}
        self.unsynced: set[Watcher] = set()
        self._wake = asyncio.Event()
        self._windows: dict[int, _Window] = {}  # recent catch-up reads, by first revision
        self._windows_compact = 0
        self.events_sent = 0  # etcd_debugging_mvcc_events_total

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
            self._ranges.setdefault((w.key, w.end), set()).add(w)

    def _remove_synced(self, w: Watcher) -> None:
        if w.end is None:
            group, gk = self._by_key, w.key
        else:
            group, gk = self._ranges, (w.key, w.end)  # type: ignore[assignment]
        ws = group.get(gk)  # type: ignore[arg-type]
        if ws is not None:
            ws.discard(w)
            if not ws:
                del group[gk]  # type: ignore[arg-type]

    def _park(self, w: Watcher) -> None:
        """A synced watcher whose stream is full: it catches up from disk later."""
        self._remove_synced(w)
        self.unsynced.add(w)
        self._wake.set()

    def synced_watchers(self) -> Iterable[Watcher]:
        for ws in self._by_key.values():
            yield from ws
        for ws in self._ranges.values():
            yield from ws

    def watcher_groups(self) -> Iterator[tuple[bytes, bytes | None, int]]:
        """(key, end, count) of every watched key or range (the console counts by these),
        without visiting each synced watcher."""
        for key, ws in self._by_key.items():
            yield key, None, len(ws)
        for (key, end), ws in self._ranges.items():
            yield key, end, len(ws)
        for w in self.unsynced:
            yield w.key, w.end, 1

    # ---- fed by apply ---------------------------------------------------------------
    def notify(self, rev: int, events: list[Event]) -> None:
        """Deliver one transaction's events (all at ``rev``) to synced watchers."""
        if not (self._by_key or self._ranges):
            return
        # which events each group of watchers (one key, or one range) gets
        groups: dict[object, tuple[set[Watcher], list[int]]] = {}
        for i, ev in enumerate(events):
            key = ev.kv.key
            ws = self._by_key.get(key)
            if ws:
                groups.setdefault(key, (ws, []))[1].append(i)
            for (lo, end), ws in self._ranges.items():
                if _in_range(key, lo, end):
                    groups.setdefault((lo, end), (ws, []))[1].append(i)
        if not groups:
            return
        enc = _Encoder(self.kv, events)
        for ws, idx in groups.values():
            batches: dict[Variant, Batch | None] = {}
            for w in list(ws):
                if rev < w.next_rev:
                    continue  # watching from a future revision
                if not w.sink.has_room():  # slow consumer: park it, replay from disk later
                    w.next_rev = rev
                    self._park(w)
                    continue
                v = w.variant
                if v not in batches:
                    _, parts = enc.batch(idx, v)
                    batches[v] = Batch.of(parts) if parts else None
                b = batches[v]
                w.next_rev = rev + 1
                if b is not None:
                    w.sent_since_progress = True
                    w.sink.deliver_batch(w, rev, b)
                    self.events_sent += len(idx)

    # ---- catching up ------------------------------------------------------------------
    async def run(self) -> None:
        """Background task: replay history to unsynced watchers until they are synced."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            progressed = self.sync_once()
            if self.unsynced:
                # let other tasks (and streams draining) run before the next pass
                await asyncio.sleep(0 if progressed else 0.01)
                self._wake.set()

    def sync_once(self) -> bool:
        """One catch-up pass: one history read for every unsynced watcher with room."""
        kv = self.kv
        todo: list[Watcher] = []
        for w in self.unsynced:
            if w.sink.has_room():
                todo.append(w)
                if len(todo) >= CATCH_UP_WATCHERS:
                    break
        if not todo:
            return False
        compact, cur = kv.compact_rev, kv.current_rev
        live = []
        for w in todo:
            if w.next_rev < compact:
                self.unsynced.discard(w)
                w.sink.deliver(w, 0, [], compact_rev=compact)
            else:
                live.append(w)
        if not live:
            return True
        lo = min(w.next_rev for w in live)
        # windows are aligned, so passes that serve different watchers (as their streams
        # drain) reuse one read and one encoding of the same history
        start = (lo - 1) // CATCH_UP_REVISIONS * CATCH_UP_REVISIONS + 1
        hi = min(cur, start + CATCH_UP_REVISIONS - 1)
        self._dispatch(live, self._window(start, hi), cur, hi)
        return True

    def _window(self, start: int, hi: int) -> _Window:
        """History [start, hi], read from disk once while passes keep asking for it."""
        if self._windows_compact != self.kv.compact_rev:  # prev_kv reads may have changed
            self._windows.clear()
            self._windows_compact = self.kv.compact_rev
        win = self._windows.get(start)
        if win is None or win.hi != hi:
            revs: list[int] = []
            events: list[Event] = []
            if start <= hi:
                for main, ev in self.kv.events_since(start, hi):
                    revs.append(main)
                    events.append(ev)
            win = _Window(self.kv, hi, revs, events)
            self._windows.pop(start, None)
            self._windows[start] = win
            while len(self._windows) > KEEP_WINDOWS:
                del self._windows[next(iter(self._windows))]  # the least recently read
        return win

    def _dispatch(self, live: list[Watcher], win: _Window, cur: int, hi: int) -> None:
        """Hand each watcher the window's events in its range from its own revision on."""
        for w in live:
            if w.next_rev > hi:
                if hi >= cur:  # already past the head (moved here while synced)
                    self.unsynced.discard(w)
                    self._add_synced(w)
                    w.sink.synced()
                continue  # else nothing for it in this window: a later pass reaches it
            if not w.sink.has_room():
                continue  # this pass already filled its stream
            krevs, parts, blob, offsets = win.batch_for(w)
            start = bisect_left(krevs, w.next_rev)
            if start < len(parts):
                view = blob if start == 0 else memoryview(blob)[offsets[start]:]
                w.sent_since_progress = True
                w.sink.deliver_batch(w, cur, Batch(parts[start:], view))
                self.events_sent += len(parts) - start
            w.next_rev = hi + 1
            if hi >= cur:
                self.unsynced.discard(w)
                self._add_synced(w)
                w.sink.synced()
