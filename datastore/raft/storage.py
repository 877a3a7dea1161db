"""Stable storage as seen by the consensus core (etcd-io/raft ``storage.go``).

The core only reads through ``Storage``; the driver writes (after each ``Ready``) through
its concrete implementation. ``MemoryStorage`` is the reference implementation used by
tests and the simulation.
"""

from __future__ import annotations

from typing import Protocol

from datastore.raft.types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    SnapOutOfDateError,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)

# Per-entry overhead used for size limits, roughly what raftpb adds around ``data``.
ENTRY_OVERHEAD = 16


def entry_size(e: Entry) -> int:
    return len(e.data) + ENTRY_OVERHEAD


def limit_size(ents: list[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of ``ents`` within ``max_size`` bytes, but never empty."""
    if max_size is None or len(ents) <= 1:
        return ents
    size = 0
    for i, e in enumerate(ents):
        size += len(e.data) + ENTRY_OVERHEAD
        if size > max_size and i > 0:
            return ents[:i]
    return ents


class Storage(Protocol):
    """Read access to the persisted log, hard state and latest snapshot.

    Indexes: the log holds ``first_index() .. last_index()``; ``first_index() - 1`` is the
    index of the latest snapshot, whose term ``term()`` must still answer. Returned lists
    are owned by the caller.
    """

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Persisted HardState and the ConfState as of the applied index given in Config."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, at least one if the range is non-empty, trimmed to
        ``max_size`` bytes. CompactedError if ``lo`` <= snapshot index, UnavailableError if
        ``hi > last_index() + 1``."""
        ...

    def term(self, i: int) -> int:
        """Term of entry ``i`` in ``[first_index() - 1, last_index()]``."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (SnapshotTemporarilyUnavailable if not ready)."""
        ...


class MemoryStorage:
    """An in-memory ``Storage``; the driver's on-disk version must behave the same.

    ``_ents[0]`` is a dummy entry carrying the index and term of the snapshot, so that
    ``term(first_index() - 1)`` works and offsets are a single subtraction.
    """

    def __init__(self, conf_state: ConfState | None = None) -> None:
        cs = conf_state if conf_state is not None else ConfState()
        self._hard_state = HardState()
        self._snapshot = Snapshot(metadata=SnapshotMetadata(conf_state=cs))
        # Latest applied ConfState; may be newer than the snapshot's (see set_conf_state).
        self._conf_state = cs
        self._ents: list[Entry] = [Entry()]

    # -- Storage -----------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        ents = self._ents
        offset = ents[0].index
        if lo <= offset:
            raise CompactedError(f"raft: entries({lo}, {hi}): compacted through {offset}")
        if hi > offset + len(ents):
            raise UnavailableError(f"raft: entries({lo}, {hi}): last index is {offset + len(ents) - 1}")
        return limit_size(ents[lo - offset : hi - offset], max_size)

    def term(self, i: int) -> int:
        ents = self._ents
        offset = ents[0].index
        if i < offset:
            raise CompactedError(f"raft: term({i}): compacted through {offset}")
        if i - offset >= len(ents):
            raise UnavailableError(f"raft: term({i}): last index is {offset + len(ents) - 1}")
        return ents[i - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writes (driver side) -----------------------------------------------------------

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def hard_state(self) -> HardState:
        return self._hard_state

    def set_conf_state(self, cs: ConfState) -> None:
        """Record the ConfState returned by ``RawNode.apply_conf_change``.

        ``initial_state`` must describe the configuration as of the applied index the
        node restarts with (etcd keeps it in its backend for the same reason).
        """
        self._conf_state = cs

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Append ``entries``, first dropping any existing suffix they conflict with."""
        if not entries:
            return
        ents = self._ents
        first = ents[0].index + 1
        last_new = entries[-1].index
        if last_new < first:
            return  # Entirely compacted already.
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - ents[0].index
        if offset > len(ents):
            raise ValueError(
                f"raft: missing log entry [last: {self.last_index()}, append at: {entries[0].index}]"
            )
        del ents[offset:]
        ents.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log with ``snap`` (a follower installing the leader's snapshot)."""
        if snap.metadata.index <= self._snapshot.metadata.index:
            raise SnapOutOfDateError(
                f"raft: snapshot {snap.metadata.index} <= {self._snapshot.metadata.index}"
            )
        self._snapshot = snap
        self._conf_state = snap.metadata.conf_state
        self._ents = [Entry(term=snap.metadata.term, index=snap.metadata.index)]
        if self._hard_state.commit < snap.metadata.index:
            self._hard_state = HardState(
                term=self._hard_state.term, vote=self._hard_state.vote, commit=snap.metadata.index
            )

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of applied ``index``."""
        if index <= self._snapshot.metadata.index:
            raise SnapOutOfDateError(f"raft: snapshot {index} <= {self._snapshot.metadata.index}")
        if index > self.last_index():
            raise ValueError(f"raft: snapshot {index} is out of bound {self.last_index()}")
        cs = conf_state if conf_state is not None else self._snapshot.metadata.conf_state
        self._snapshot = Snapshot(
            data=data, metadata=SnapshotMetadata(conf_state=cs, index=index, term=self.term(index))
        )
        return self._snapshot

    def compact(self, index: int) -> None:
        """Discard entries before ``index``; the entry at ``index`` becomes the dummy."""
        ents = self._ents
        offset = ents[0].index
        if index <= offset:
            raise CompactedError(f"raft: compact({index}): compacted through {offset}")
        if index > self.last_index():
            raise ValueError(f"raft: compact {index} is out of bound {self.last_index()}")
        i = index - offset
        dummy = Entry(term=ents[i].term, index=ents[i].index)
        del ents[:i]
        ents[0] = dummy
