"""The in-memory index: user key -> KeyIndex, kept sorted for range scans.

Rebuilt from the ``key`` column family at start-up (as etcd rebuilds its treeIndex).
``end`` follows etcd's internal convention: ``None`` = the single key, ``b""`` = every
key >= ``key`` (the wire's ``"\\0"`` range_end), otherwise the half-open [key, end).
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedDict, SortedList

from datastore.mvcc.key_index import KeyIndex
from datastore.mvcc.revision import Revision


class TreeIndex:
    """Besides every key's history, the index tracks which keys are dead (deleted, not
    yet compacted away) and the newest revision it holds: a read at or after that
    revision (every list without a past revision) counts a range by bisection and walks
    only the keys it returns, instead of asking every key's history."""

    def __init__(self) -> None:
        self._keys: SortedDict = SortedDict()
        self._dead: SortedList = SortedList()
        self.latest = 0  # newest main revision recorded (writes not yet flushed included)

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key: bytes) -> KeyIndex | None:
        return self._keys.get(key)

    def get_or_create(self, key: bytes) -> KeyIndex:
        ki = self._keys.get(key)
        if ki is None:
            ki = self._keys[key] = KeyIndex(key)
        return ki

    def put(self, ki: KeyIndex, rev: Revision) -> None:
        if ki.deleted:
            self._dead.discard(ki.key)  # a deleted key comes back
        ki.put(rev)
        if rev[0] > self.latest:
            self.latest = rev[0]

    def tombstone(self, ki: KeyIndex, rev: Revision) -> None:
        ki.tombstone(rev)
        self._dead.add(ki.key)
        if rev[0] > self.latest:
            self.latest = rev[0]

    def load(self, keys: dict[bytes, KeyIndex], latest: int) -> None:
        """Fill an empty index at once from histories rebuilt at start-up: one sort of
        the keys instead of a sorted insertion per key (most of a 1M-key rebuild)."""
        assert not self._keys, "load() fills an empty index"
        self._keys = SortedDict(keys)
        self._dead = SortedList(k for k, ki in keys.items() if ki.deleted)
        self.latest = max(self.latest, latest)

    def scan(self, key: bytes, end: bytes | None) -> Iterator[KeyIndex]:
        """KeyIndexes in key order over the range (including dead keys)."""
        if end is None:
            ki = self._keys.get(key)
            if ki is not None:
                yield ki
            return
        keys = self._keys
        maximum = end if end else None
        if maximum is not None and maximum <= key:
            return
        for k in keys.irange(key, maximum, inclusive=(True, False)):
            yield keys[k]

    def revisions(self, key: bytes, end: bytes | None, main: int, limit: int = 0,
                  count_only: bool = False, changed: set[bytes] | None = None,
                  ) -> tuple[list[tuple[KeyIndex, Revision]], int]:
        """Live (KeyIndex, modified revision) pairs at ``main`` and the total live count.

        Up to ``limit`` pairs (0 = all; none if ``count_only``) are returned; the count
        covers the whole range. ``changed``, if given, holds every key written after
        ``main``: the other keys look at ``main`` as they look now.
        """
        if count_only:
            limit = -1
        if end is not None:
            if main >= self.latest:
                return self._latest_revisions(key, end, limit)
            if changed is not None:
                return self._past_revisions(key, end, main, limit, changed)
        out: list[tuple[KeyIndex, Revision]] = []
        total = 0
        for ki in self.scan(key, end):
            got = ki.get(main)
            if got is None:
                continue
            total += 1
            if limit == 0 or len(out) < limit:
                out.append((ki, got[0]))
        return out, total

    def _latest_revisions(self, key: bytes, end: bytes,
                          limit: int) -> tuple[list[tuple[KeyIndex, Revision]], int]:
        """revisions() when nothing in the index is newer than the read: every live key
        is at its last revision, so count = keys in range - dead keys in range."""
        keys, dead = self._keys, self._dead
        if end and end <= key:
            return [], 0
        hi = keys.bisect_left(end) if end else len(keys)
        lo = keys.bisect_left(key)
        total = hi - lo
        if dead:
            total -= (dead.bisect_left(end) if end else len(dead)) - dead.bisect_left(key)
        if limit == 0:
            limit = total
        out: list[tuple[KeyIndex, Revision]] = []
        if limit <= 0:
            return out, total
        if not dead:
            return [(ki, ki.modified) for ki in keys.values()[lo:min(hi, lo + limit)]], total
        for k in keys.islice(lo, hi):
            ki = keys[k]
            if ki.alive:
                out.append((ki, ki.modified))
                if len(out) >= limit:
                    break
        return out, total

    def _past_revisions(self, key: bytes, end: bytes, main: int, limit: int,
                        changed: set[bytes]) -> tuple[list[tuple[KeyIndex, Revision]], int]:
        """revisions() at a past revision, knowing the few keys written since: the count
        at the latest revision corrected for them, and a walk that asks only them for
        their history."""
        keys = self._keys
        _, total = self._latest_revisions(key, end, -1)
        for k in changed:
            if k < key or (end and k >= end):
                continue
            ki = keys.get(k)
            if ki is not None:
                total += (ki.get(main) is not None) - ki.alive
        out: list[tuple[KeyIndex, Revision]] = []
        if limit < 0 or (end and end <= key):
            return out, total
        hi = keys.bisect_left(end) if end else len(keys)
        for k in keys.islice(keys.bisect_left(key), hi):
            ki = keys[k]
            if k in changed:
                got = ki.get(main)
                if got is None:
                    continue
                out.append((ki, got[0]))
            elif ki.alive:
                out.append((ki, ki.modified))
            else:
                continue
            if len(out) == limit:
                break
        return out, total

    def compact(self, main: int) -> set[Revision]:
        """Compact every key's history to ``main``; returns the revisions still needed."""
        available: set[Revision] = set()
        empty = []
        for k, ki in self._keys.items():
            ki.compact(main, available)
            if ki.is_empty:
                empty.append(k)
        for k in empty:
            del self._keys[k]
            self._dead.discard(k)
        return available

    def keep(self, main: int) -> set[Revision]:
        available: set[Revision] = set()
        for ki in self._keys.values():
            available |= ki.keep(main)
        return available
