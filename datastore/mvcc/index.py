"""The in-memory index: user key -> KeyIndex, kept sorted for range scans.

Rebuilt from the ``key`` column family at start-up (as etcd rebuilds its treeIndex).
``end`` follows etcd's internal convention: ``None`` = the single key, ``b""`` = every
key >= ``key`` (the wire's ``"\\0"`` range_end), otherwise the half-open [key, end).
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedDict

from datastore.mvcc.key_index import KeyIndex
from datastore.mvcc.revision import Revision


class TreeIndex:
    def __init__(self) -> None:
        self._keys: SortedDict = SortedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key: bytes) -> KeyIndex | None:
        return self._keys.get(key)

    def get_or_create(self, key: bytes) -> KeyIndex:
        ki = self._keys.get(key)
        if ki is None:
            ki = self._keys[key] = KeyIndex(key)
        return ki

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

    def revisions(self, key: bytes, end: bytes | None, main: int,
                  limit: int = 0) -> tuple[list[tuple[KeyIndex, Revision]], int]:
        """Live (KeyIndex, modified revision) pairs at ``main`` and the total live count.

        Up to ``limit`` pairs (0 = all) are returned; the count covers the whole range.
        """
        out: list[tuple[KeyIndex, Revision]] = []
        total = 0
        for ki in self.scan(key, end):
            got = ki.get(main)
            if got is None:
                continue
            total += 1
            if limit <= 0 or len(out) < limit:
                out.append((ki, got[0]))
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
        return available

    def keep(self, main: int) -> set[Revision]:
        available: set[Revision] = set()
        for ki in self._keys.values():
            available |= ki.keep(main)
        return available
