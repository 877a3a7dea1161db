"""The replicated log: stable ``Storage`` plus an in-memory unstable tail.

Follows etcd-io/raft ``log.go`` and ``log_unstable.go``. Entries enter the unstable tail
(``append``), are handed to the driver in a ``Ready`` and become stable once the driver
calls ``advance``. Only stable entries are ever handed out as committed.

Invariants: ``applied <= applying <= committed``; ``offset - 1`` is the last stable index.
"""

from __future__ import annotations

from datastore.raft.storage import Storage, limit_size
from datastore.raft.types import CompactedError, Entry, Snapshot, UnavailableError


class RaftLog:
    def __init__(self, storage: Storage, max_committed_size_per_ready: int) -> None:
        self.storage = storage
        self.max_committed_size_per_ready = max_committed_size_per_ready
        last = storage.last_index()
        # Unstable tail: entries[i] has index offset + i.
        self.entries_unstable: list[Entry] = []
        self.offset = last + 1
        # First unstable index not yet handed out in a Ready (etcd's offsetInProgress).
        self.in_progress = last + 1
        # Snapshot received from the leader, not yet persisted by the driver.
        self.unstable_snapshot: Snapshot | None = None
        self.snapshot_in_progress = False
        # Highest index known committed (thesis §3.5); persisted via HardState.commit.
        self.committed = storage.first_index() - 1
        # Highest index handed to the driver for applying, and highest it confirmed.
        self.applying = self.committed
        self.applied = self.committed

    # -- indexes and terms --------------------------------------------------------------

    def first_index(self) -> int:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.entries_unstable:
            return self.offset + len(self.entries_unstable) - 1
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.metadata.index
        return self.storage.last_index()

    def stable_last_index(self) -> int:
        """Last index the driver has persisted (and that is still part of this log)."""
        return self.offset - 1

    def term(self, i: int) -> int:
        """Term of entry ``i``; raises CompactedError / UnavailableError out of range."""
        k = i - self.offset
        if k >= 0:
            if k < len(self.entries_unstable):
                return self.entries_unstable[k].term
            raise UnavailableError(f"raft: term({i}): last index is {self.last_index()}")
        snap = self.unstable_snapshot
        if snap is not None:
            if i == snap.metadata.index:
                return snap.metadata.term
            if i < snap.metadata.index:
                raise CompactedError(f"raft: term({i}): compacted")
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        try:
            return self.term(i)
        except (CompactedError, UnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, i: int, term: int) -> bool:
        try:
            return self.term(i) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, lasti: int, term: int) -> bool:
        """Election restriction (thesis §3.6.1): is a candidate's log at least as recent?"""
        lt = self.last_term()
        return term > lt or (term == lt and lasti >= self.last_index())

    # -- appending ----------------------------------------------------------------------

    def append(self, ents: list[Entry] | tuple[Entry, ...]) -> int:
        """Append to the unstable tail, truncating any conflicting suffix first."""
        if not ents:
            return self.last_index()
        after = ents[0].index
        if after - 1 < self.committed:
            raise AssertionError(f"raft: append at {after} would overwrite commit {self.committed}")
        unstable = self.entries_unstable
        if after == self.offset + len(unstable):
            unstable.extend(ents)
        elif after <= self.offset:
            # Replaces everything unstable, and possibly a stable suffix in storage (the
            # driver's append truncates it when it persists these).
            self.entries_unstable = list(ents)
            self.offset = after
            self.in_progress = after
        else:
            del unstable[after - self.offset :]
            unstable.extend(ents)
            if self.in_progress > after:
                self.in_progress = after
        return self.last_index()

    def find_conflict(self, ents: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry that is new or disagrees with our log, or 0.

        Cheap in the common case: the first entry beyond ``last_index`` ends the scan.
        """
        last = self.last_index()
        for e in ents:
            if e.index > last or not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, and that term.

        Lets a rejected leader skip a whole term of divergent entries per round trip
        (thesis §5.3's optimisation, as etcd implements it).
        """
        while index > 0:
            try:
                t = self.term(index)
            except (CompactedError, UnavailableError):
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(self, index: int, log_term: int, committed: int, ents: tuple[Entry, ...]) -> int | None:
        """Follower side of MsgApp (thesis §3.5). Returns the last new index, or None on
        a consistency-check failure."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise AssertionError(f"raft: entry {ci} conflicts with committed {self.committed}")
            self.append(ents[ci - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    # -- commit / apply / persist -------------------------------------------------------

    def commit_to(self, c: int) -> None:
        if c > self.committed:
            if c > self.last_index():
                raise AssertionError(f"raft: commit {c} out of range [{self.last_index()}]")
            self.committed = c

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit ``max_index`` only if it is from ``term`` (thesis §3.6.2 / Figure 3.8)."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i > self.applied:
            self.applied = i
        if self.applying < i:
            self.applying = i

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries through ``index``; ignored if since overwritten."""
        k = index - self.offset
        if k < 0 or k >= len(self.entries_unstable):
            return
        if self.entries_unstable[k].term != term:
            return
        del self.entries_unstable[: k + 1]
        self.offset = index + 1
        if self.in_progress < self.offset:
            self.in_progress = self.offset

    def stable_snap_to(self, index: int) -> None:
        snap = self.unstable_snapshot
        if snap is not None and snap.metadata.index == index:
            self.unstable_snapshot = None
            self.snapshot_in_progress = False

    def restore(self, snap: Snapshot) -> None:
        """Replace the log by ``snap`` (follower receiving MsgSnap, thesis §5.2)."""
        idx = snap.metadata.index
        self.committed = idx
        self.unstable_snapshot = snap
        self.snapshot_in_progress = False
        self.entries_unstable = []
        self.offset = idx + 1
        self.in_progress = idx + 1

    # -- reading ------------------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)`` from storage and/or the unstable tail, size-limited."""
        if lo >= hi:
            return []
        fi = self.first_index()
        if lo < fi:
            raise CompactedError(f"raft: slice({lo}, {hi}): first index is {fi}")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"raft: slice({lo}, {hi}): last index is {self.last_index()}")
        off = self.offset
        if lo >= off:
            return limit_size(self.entries_unstable[lo - off : hi - off], max_size)
        ents = self.storage.entries(lo, min(hi, off), max_size)
        if hi > off and len(ents) == min(hi, off) - lo:
            tail = self.entries_unstable[: hi - off]
            if max_size is None:
                ents.extend(tail)
            else:
                ents = limit_size(ents + tail, max_size)
        return ents

    def entries_from(self, lo: int, max_size: int | None) -> list[Entry]:
        return self.slice(lo, self.last_index() + 1, max_size)

    def snapshot(self) -> Snapshot:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot
        return self.storage.snapshot()

    def unstable_to_persist(self) -> list[Entry]:
        """Unstable entries not yet handed to the driver."""
        k = self.in_progress - self.offset
        if k >= len(self.entries_unstable):
            return []
        return self.entries_unstable[k:]

    def accept_unstable(self) -> None:
        self.in_progress = self.offset + len(self.entries_unstable)
        if self.unstable_snapshot is not None:
            self.snapshot_in_progress = True

    def has_next_committed_ents(self) -> bool:
        if self.unstable_snapshot is not None:
            return False  # Apply the snapshot first.
        return min(self.committed, self.offset - 1) > self.applying

    def next_committed_ents(self) -> list[Entry]:
        """Committed and persisted entries not yet handed out for applying."""
        if self.unstable_snapshot is not None:
            return []
        lo = max(self.applying + 1, self.first_index())
        hi = min(self.committed, self.offset - 1) + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi, self.max_committed_size_per_ready)
