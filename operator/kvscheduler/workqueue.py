"""Pending pods waiting for a decision, pure (the clock is passed in).

Three places a pod can be, as in kube-scheduler's queue: ``active`` (FIFO, next to be
decided), ``backoff`` (a bind conflict or error: retry after a growing delay) and
``unschedulable`` (fits nowhere: parked until the cluster changes in a way that may help,
i.e. a node is added or updated or a pod is deleted).
"""

from __future__ import annotations

from collections.abc import Callable

BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 5.0


class SchedulingQueue:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.active: dict[str, None] = {}  # insertion-ordered set
        self.backoff: dict[str, float] = {}  # key -> ready time
        self.unschedulable: set[str] = set()
        self.attempts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.active) + len(self.backoff) + len(self.unschedulable)

    def __contains__(self, key: str) -> bool:
        return key in self.active or key in self.backoff or key in self.unschedulable

    def add(self, key: str) -> None:
        """A new or changed pending pod: decide it (again) soon. Keeps a backoff running."""
        self.unschedulable.discard(key)
        if key not in self.backoff:
            self.active.setdefault(key, None)

    def remove(self, key: str) -> None:
        """The pod was bound, deleted or is not ours any more."""
        self.active.pop(key, None)
        self.backoff.pop(key, None)
        self.unschedulable.discard(key)
        self.attempts.pop(key, None)

    def pop(self) -> str | None:
        """The next pod to decide, or None when nothing is ready now."""
        self._flush_backoff()
        if not self.active:
            return None
        key = next(iter(self.active))
        del self.active[key]
        return key

    def retry_later(self, key: str) -> float:
        """Back off this pod (exponentially per consecutive failure); returns the delay."""
        n = self.attempts.get(key, 0)
        self.attempts[key] = n + 1
        delay = min(BACKOFF_INITIAL * (2 ** n), BACKOFF_MAX)
        self.active.pop(key, None)
        self.unschedulable.discard(key)
        self.backoff[key] = self.clock() + delay
        return delay

    def park_unschedulable(self, key: str) -> None:
        self.active.pop(key, None)
        self.backoff.pop(key, None)
        self.unschedulable.add(key)

    def move_all_unschedulable(self) -> int:
        """The cluster changed in a way that may let parked pods fit: decide them again."""
        n = len(self.unschedulable)
        for key in sorted(self.unschedulable):
            self.active.setdefault(key, None)
        self.unschedulable.clear()
        return n

    def clear(self) -> None:
        self.active.clear()
        self.backoff.clear()
        self.unschedulable.clear()
        self.attempts.clear()

    def next_ready_in(self) -> float | None:
        """Seconds until the earliest backoff ends (0 if something is active), or None."""
        if self.active:
            return 0.0
        if not self.backoff:
            return None
        return max(0.0, min(self.backoff.values()) - self.clock())

    def _flush_backoff(self) -> None:
        now = self.clock()
        for key, t in sorted(self.backoff.items(), key=lambda kv: kv[1]):
            if t <= now:
                del self.backoff[key]
                self.active.setdefault(key, None)
