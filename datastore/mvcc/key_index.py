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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datastore.mvcc.revision import Revision


@dataclass(slots=True)
class Generation:
    created: Revision = (0, 0)
    revs: list[Revision] = field(default_factory=list)
    # ver counts puts in this generation; the tombstone also bumps it, as in etcd.
    ver: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.revs


class KeyIndex:
    __slots__ = ("generations", "key", "modified")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.modified: Revision = (0, 0)
        self.generations: list[Generation] = [Generation()]

    def put(self, rev: Revision) -> None:
        g = self.generations[-1]
        if g.is_empty:
            g.created = rev
        g.revs.append(rev)
        g.ver += 1
        self.modified = rev

    def restore(self, created: Revision, modified: Revision, ver: int) -> None:
        """Start the history from disk, where older revisions may be compacted away:
        the stored KeyValue knows the true create revision and version."""
        g = self.generations[-1]
        g.created, g.revs, g.ver = created, [modified], ver
        self.modified = modified

    def tombstone(self, rev: Revision) -> None:
        """Record a deletion at rev and open a new, empty generation."""
        self.put(rev)
        self.generations.append(Generation())

    @property
    def is_empty(self) -> bool:
        return len(self.generations) == 1 and self.generations[0].is_empty

    @property
    def alive(self) -> bool:
        """True if the key currently exists (its last generation has revisions)."""
        return not self.generations[-1].is_empty

    def _find_generation(self, main: int) -> Generation | None:
        """The generation that holds the key's state at main revision ``main``."""
        gens = self.generations
        last = len(gens) - 1
        for i in range(last, -1, -1):
            g = gens[i]
            if g.is_empty:
                continue
            if i != last and g.revs[-1][0] <= main:
                return None  # that generation was tombstoned at or before main
            if g.revs[0][0] <= main:
                return g
        return None

    def get(self, main: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of the key as of ``main``, or None if absent."""
        g = self._find_generation(main)
        if g is None:
            return None
        revs = g.revs
        for n in range(len(revs) - 1, -1, -1):
            if revs[n][0] <= main:
                return revs[n], g.created, g.ver - (len(revs) - 1 - n)
        return None

    def _compaction_point(self, main: int) -> tuple[int, int]:
        """(generation index, revision index) of what compacting at ``main`` keeps.

        The generation is the first one still alive at ``main`` (or the last one); the
        revision is its latest one <= main, or -1 if it has none (created after main).
        """
        gens = self.generations
        i = 0
        while i < len(gens) - 1 and gens[i].revs[-1][0] <= main:
            i += 1
        revs = gens[i].revs
        for n in range(len(revs) - 1, -1, -1):
            if revs[n][0] <= main:
                return i, n
        return i, -1

    def compact(self, main: int, available: set[Revision]) -> None:
        """Drop history older than ``main``, adding the revisions to keep to ``available``."""
        gens = self.generations
        i, n = self._compaction_point(main)
        g = gens[i]
        if not g.is_empty:
            if n != -1:
                available.add(g.revs[n])
                g.revs = g.revs[n:]
            # a generation left holding only its tombstone carries no value: drop it
            if len(g.revs) == 1 and i != len(gens) - 1:
                available.discard(g.revs[0])
                i += 1
        del gens[:i]

    def keep(self, main: int) -> set[Revision]:
        """What compact(main) would keep, without changing anything (for HashKV)."""
        i, n = self._compaction_point(main)
        g = self.generations[i]
        if n == -1 or (n == len(g.revs) - 1 and i != len(self.generations) - 1):
            return set()  # nothing at main, or only the tombstone that ends a generation
        return {g.revs[n]}

    def __repr__(self) -> str:
        gens = " ".join("{" + ",".join(f"{m}.{s}" for m, s in g.revs) + "}" for g in self.generations)
        return f"KeyIndex({self.key!r}: {gens})"
