"""KeyIndex's packed representation against the plain one it replaced.

``RefKeyIndex`` below is the straightforward model (a list of generations, each a list of
revision tuples): hypothesis drives both through the same puts, tombstones, restores and
compactions and they must answer get/keep/modified/alive/generations identically. A
second test pins the memory per key, so the index stays sized per key.
"""

from __future__ import annotations

import sys
import tracemalloc
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from datastore.mvcc.index import TreeIndex
from datastore.mvcc.key_index import KeyIndex

Revision = tuple[int, int]


@dataclass
class RefGen:
    created: Revision = (0, 0)
    revs: list[Revision] = field(default_factory=list)
    ver: int = 0


class RefKeyIndex:
    def __init__(self) -> None:
        self.modified: Revision = (0, 0)
        self.gens = [RefGen()]

    def put(self, rev: Revision) -> None:
        g = self.gens[-1]
        if not g.revs:
            g.created = rev
        g.revs.append(rev)
        g.ver += 1
        self.modified = rev

    def restore(self, created: Revision, modified: Revision, ver: int) -> None:
        g = self.gens[-1]
        g.created, g.revs, g.ver = created, [modified], ver
        self.modified = modified

    def tombstone(self, rev: Revision) -> None:
        self.put(rev)
        self.gens.append(RefGen())

    def get(self, main: int) -> tuple[Revision, Revision, int] | None:
        last = len(self.gens) - 1
        for i in range(last, -1, -1):
            g = self.gens[i]
            if not g.revs:
                continue
            if i != last and g.revs[-1][0] <= main:
                return None
            if g.revs[0][0] <= main:
                for n in range(len(g.revs) - 1, -1, -1):
                    if g.revs[n][0] <= main:
                        return g.revs[n], g.created, g.ver - (len(g.revs) - 1 - n)
        return None

    def _point(self, main: int) -> tuple[int, int]:
        i = 0
        while i < len(self.gens) - 1 and self.gens[i].revs[-1][0] <= main:
            i += 1
        revs = self.gens[i].revs
        for n in range(len(revs) - 1, -1, -1):
            if revs[n][0] <= main:
                return i, n
        return i, -1

    def compact(self, main: int, available: set[Revision]) -> None:
        i, n = self._point(main)
        g = self.gens[i]
        if g.revs:
            if n != -1:
                available.add(g.revs[n])
                g.revs = g.revs[n:]
            if len(g.revs) == 1 and i != len(self.gens) - 1:
                available.discard(g.revs[0])
                i += 1
        del self.gens[:i]

    def keep(self, main: int) -> set[Revision]:
        i, n = self._point(main)
        g = self.gens[i]
        if n == -1 or (n == len(g.revs) - 1 and i != len(self.gens) - 1):
            return set()
        return {g.revs[n]}


OPS = st.lists(st.tuples(st.sampled_from(["put", "put", "put", "del", "compact"]),
                         st.integers(0, 2), st.integers(1, 3)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, restore=st.booleans(), big=st.booleans())
def test_packed_matches_reference(ops: list[tuple[str, int, int]], restore: bool,
                                  big: bool) -> None:
    ki, ref = KeyIndex(b"k"), RefKeyIndex()
    rev = 2**40 if big else 1  # revisions far above 2**32 pack the same way
    compacted = rev - 1
    if restore:
        ki.restore((rev - 1, 0), (rev, 1), 7)
        ref.restore((rev - 1, 0), (rev, 1), 7)
    for op, sub, step in ops:
        rev += step
        if op == "put":
            ki.put((rev, sub))
            ref.put((rev, sub))
        elif op == "del" and ref.gens[-1].revs:  # only a live key can be deleted
            ki.tombstone((rev, sub))
            ref.tombstone((rev, sub))
        elif op == "compact":
            compacted = max(compacted, rev - step * 3)
            assert ki.keep(compacted) == ref.keep(compacted)
            a: set[Revision] = set()
            b: set[Revision] = set()
            ki.compact(compacted, a)
            ref.compact(compacted, b)
            assert a == b
        assert ki.modified == ref.modified or (ki.is_empty and not any(g.revs for g in ref.gens))
        assert [(g.created, g.revs, g.ver) if g.revs else [] for g in ki.generations] == \
            [(g.created, g.revs, g.ver) if g.revs else [] for g in ref.gens]
        assert ki.alive == bool(ref.gens[-1].revs)
        assert ki.deleted == (len(ref.gens) > 1 and not ref.gens[-1].revs)
        assert ki.is_empty == (len(ref.gens) == 1 and not ref.gens[0].revs)
        for main in range(compacted, rev + 2):
            assert ki.get(main) == ref.get(main), (main, ki)


def test_index_memory_is_per_key() -> None:
    """10k keys with one revision each, then 5 more revisions on each: per key and per
    revision costs stay small (an object per revision would cost ~100 B each)."""
    keys = [b"/registry/pods/%06d" % i for i in range(10_000)]
    idx = TreeIndex()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i, k in enumerate(keys):
            idx.put(idx.get_or_create(k), (i + 2, 0))
        one = tracemalloc.get_traced_memory()[0] - base
        for r in range(5):
            for i, k in enumerate(keys):
                idx.put(idx.get(k), (100_000 * (r + 1) + i, 0))  # type: ignore[arg-type]
        six = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    per_key = one / len(keys)
    per_rev = (six - one) / (5 * len(keys))
    assert per_key < 260, per_key  # KeyIndex 56 + array 120 + the sorted dict's share
    assert per_rev < 30, per_rev  # 16 B of array (plus its growth slack)
    assert sys.getsizeof(idx.get(keys[0])) < 100
