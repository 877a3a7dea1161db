"""The history of one key: its generations of revisions.

A generation is one life of a key, from its creation to its deletion (tombstone).
Worked example (as etcd documents its keyIndex)::

    put(1.0); put(2.0); tombstone(3.0); put(4.0); tombstone(5.0)
    generations:
        {empty}
        {4.0, 5.0(t)}
        {1.0, 2.0, 3.0(t)}

    compact(2) keeps 2.0 (the latest revision <= 2 of a live generation):
        {empty} {4.0, 5.0(t)} {2.0, 3.0(t)}
    compact(4) drops the first generation entirely (its tombstone 3.0 <= 4):
        {empty} {4.0, 5.0(t)}
    compact(5) drops everything: the key is removed from the index.
        {empty}

``get(rev)`` answers "what did this key look like at revision rev": the latest
revision <= rev in the generation alive at rev, with that generation's create revision
and the version (1-based count of puts in the generation).

Memory: the index holds every key, so a key costs one object and one packed array, not
an object per generation plus a tuple and an int per revision. A generation is an
``array('q')`` laid out ``[created main, created sub, ver, main0, sub0, main1, sub1, ...]``
(16 bytes per revision); the empty generation is the shared, never mutated ``_EMPTY``.
Revisions leave as ``(main, sub)`` tuples, built on demand.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from datastore.mvcc.revision import Revision

_EMPTY = array("q")  # the empty generation: replaced on put, never appended to
_HEAD = 3  # created main, created sub, ver; then (main, sub) pairs


@dataclass(slots=True)
class Generation:
    """A read-only view of one generation (for tests and repr)."""

    created: Revision = (0, 0)
    revs: list[Revision] = field(default_factory=list)
    # ver counts puts in this generation; the tombstone also bumps it, as in etcd.
    ver: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.revs


def _new_gen(created: Revision, last: Revision, ver: int) -> array:
    return array("q", (created[0], created[1], ver, last[0], last[1]))


def _last_le(g: array, main: int) -> int:
    """Offset of the latest revision of ``g`` with main <= ``main``, or -1."""
    for off in range(len(g) - 2, _HEAD - 1, -2):
        if g[off] <= main:
            return off
    return -1


class KeyIndex:
    # _cur: the last generation (possibly empty); _old: the earlier ones, oldest first,
    # each ending with its tombstone (None when there are none: most keys)
    __slots__ = ("_cur", "_old", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._cur: array = _EMPTY
        self._old: list[array] | None = None

    def put(self, rev: Revision) -> None:
        g = self._cur
        if not g:
            self._cur = _new_gen(rev, rev, 1)
            return
        g.append(rev[0])
        g.append(rev[1])
        g[2] += 1

    def restore(self, created: Revision, modified: Revision, ver: int) -> None:
        """Start the history from disk, where older revisions may be compacted away:
        the stored KeyValue knows the true create revision and version."""
        self._cur = _new_gen(created, modified, ver)

    @classmethod
    def from_disk(cls, key: bytes, created: int, main: int, sub: int, ver: int) -> KeyIndex:
        """``KeyIndex(key)`` then ``restore((created, 0), (main, sub), ver)``, in one step
        (a rebuild makes one per key)."""
        ki = cls.__new__(cls)
        ki.key = key
        ki._cur = array("q", (created, 0, ver, main, sub))
        ki._old = None
        return ki

    def tombstone(self, rev: Revision) -> None:
        """Record a deletion at rev and open a new, empty generation."""
        self.put(rev)
        if self._old is None:
            self._old = [self._cur]
        else:
            self._old.append(self._cur)
        self._cur = _EMPTY

    @property
    def modified(self) -> Revision:
        """The last revision recorded (a tombstone included); (0, 0) if none."""
        g = self._cur or (self._old[-1] if self._old else None)
        return (g[-2], g[-1]) if g else (0, 0)

    @property
    def generations(self) -> list[Generation]:
        """A snapshot of the history as Generation views, oldest first."""
        return [Generation((g[0], g[1]), [(g[i], g[i + 1]) for i in range(_HEAD, len(g), 2)],
                           g[2]) if g else Generation() for g in self._gens()]

    def _gens(self) -> list[array]:
        return [*self._old, self._cur] if self._old else [self._cur]

    @property
    def is_empty(self) -> bool:
        return not self._cur and not self._old

    @property
    def alive(self) -> bool:
        """True if the key currently exists (its last generation has revisions)."""
        return bool(self._cur)

    @property
    def deleted(self) -> bool:
        """True if the key existed and its last life ended with a tombstone."""
        return not self._cur and bool(self._old)

    def _find_generation(self, main: int) -> array | None:
        """The generation that holds the key's state at main revision ``main``."""
        g = self._cur
        if g and g[_HEAD] <= main:
            return g
        for g in reversed(self._old or ()):
            if g[-2] <= main:
                return None  # that generation was tombstoned at or before main
            if g[_HEAD] <= main:
                return g
        return None

    def get(self, main: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of the key as of ``main``, or None if absent."""
        g = self._find_generation(main)
        if g is None:
            return None
        off = _last_le(g, main)
        if off < 0:
            return None
        return (g[off], g[off + 1]), (g[0], g[1]), g[2] - (len(g) - 2 - off) // 2

    def _compaction_point(self, main: int) -> tuple[list[array], int, int]:
        """(generations, generation index, revision offset) of what compacting at
        ``main`` keeps.

        The generation is the first one still alive at ``main`` (or the last one); the
        offset is that of its latest revision <= main, or -1 if it has none.
        """
        gens = self._gens()
        i = 0
        while i < len(gens) - 1 and gens[i][-2] <= main:
            i += 1
        return gens, i, _last_le(gens[i], main)

    def compact(self, main: int, available: set[Revision]) -> None:
        """Drop history older than ``main``, adding the revisions to keep to ``available``."""
        if self._old is None:  # one generation (most keys): nothing before it to drop
            g = self._cur
            if not g:
                return
            off = len(g) - 2 if g[-2] <= main else _last_le(g, main)
            if off != -1:
                available.add((g[off], g[off + 1]))
                if off > _HEAD:
                    self._cur = g[:_HEAD] + g[off:]
            return
        gens, i, off = self._compaction_point(main)
        g = gens[i]
        if g:
            if off != -1:
                available.add((g[off], g[off + 1]))
                if off > _HEAD:
                    g = gens[i] = g[:_HEAD] + g[off:]
            # a generation left holding only its tombstone carries no value: drop it
            if len(g) == _HEAD + 2 and i != len(gens) - 1:
                available.discard((g[_HEAD], g[_HEAD + 1]))
                i += 1
        del gens[:i]
        self._cur = gens[-1]
        self._old = gens[:-1] or None

    def keep(self, main: int) -> set[Revision]:
        """What compact(main) would keep, without changing anything (for HashKV)."""
        if self._old is None:
            g = self._cur
            off = _last_le(g, main)
            return set() if off == -1 else {(g[off], g[off + 1])}
        gens, i, off = self._compaction_point(main)
        g = gens[i]
        if off == -1 or (off == len(g) - 2 and i != len(gens) - 1):
            return set()  # nothing at main, or only the tombstone that ends a generation
        return {(g[off], g[off + 1])}

    def __repr__(self) -> str:
        gens = " ".join("{" + ",".join(f"{m}.{s}" for m, s in g.revs) + "}"
                        for g in self.generations)
        return f"KeyIndex({self.key!r}: {gens})"
