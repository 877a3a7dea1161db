"""A small log-linear latency histogram in integer microseconds (HDR-style, ~0.8 % precision).

Values below 256 us get one bucket each; above that every power of two is split into 128
buckets. Recording is a few integer operations, histograms from several processes merge by
adding counts, and memory is bounded (a fixed list of counters) however long the run.
"""

from __future__ import annotations

from typing import Any

_NBUCKETS = 4608  # covers values up to 2**35 us (about 9.5 hours)


def bucket_of(us: int) -> int:
    """The bucket index of a value in microseconds (negative values count as 0)."""
    if us < 256:
        return us if us > 0 else 0
    s = us.bit_length() - 8
    idx = (s << 7) + (us >> s)
    return idx if idx < _NBUCKETS else _NBUCKETS - 1


def bucket_bounds(idx: int) -> tuple[int, int]:
    """[low, high) of a bucket in microseconds."""
    if idx < 256:
        return idx, idx + 1
    s = (idx >> 7) - 1
    m = idx - (s << 7)
    return m << s, (m + 1) << s


class Histogram:
    """Latency histogram. ``record`` takes microseconds."""

    __slots__ = ("count", "counts", "max", "min", "sum")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * _NBUCKETS
        self.count = 0
        self.sum = 0
        self.max = 0
        self.min = 0

    def record(self, us: int) -> None:
        if us < 256:
            self.counts[us if us > 0 else 0] += 1
        else:
            s = us.bit_length() - 8
            idx = (s << 7) + (us >> s)
            self.counts[idx if idx < _NBUCKETS else _NBUCKETS - 1] += 1
        self.count += 1
        self.sum += us
        if us > self.max:
            self.max = us
        if us < self.min or self.count == 1:
            self.min = us

    def merge(self, other: Histogram) -> None:
        if other.count == 0:
            return
        if self.count == 0 or other.min < self.min:
            self.min = other.min
        mine = self.counts
        for i, c in enumerate(other.counts):
            if c:
                mine[i] += c
        self.count += other.count
        self.sum += other.sum
        self.max = max(self.max, other.max)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) in microseconds; 0.0 when empty.

        Returns the middle of the bucket holding the rank, clamped to the exact min/max.
        """
        if self.count == 0:
            return 0.0
        if q >= 100:
            return float(self.max)
        rank = max(1, int(q / 100.0 * self.count + 0.999999))
        seen = 0
        for i, c in enumerate(self.counts):
            if c:
                seen += c
                if seen >= rank:
                    lo, hi = bucket_bounds(i)
                    mid = (lo + hi - 1) / 2.0
                    return float(min(max(mid, self.min), self.max))
        return float(self.max)

    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def summary_ms(self) -> dict[str, float]:
        """mean/min/p50/p90/p99/p99.9/max in milliseconds."""
        out = {
            "mean": self.mean(),
            "min": float(self.min),
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p99": self.percentile(99),
            "p999": self.percentile(99.9),
            "max": float(self.max),
        }
        return {k: round(v / 1000.0, 4) for k, v in out.items()}

    # Compact, picklable form for passing between processes.
    def to_dict(self) -> dict[str, Any]:
        return {
            "buckets": {i: c for i, c in enumerate(self.counts) if c},
            "count": self.count, "sum": self.sum, "max": self.max, "min": self.min,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        h = cls()
        for i, c in d["buckets"].items():
            h.counts[int(i)] = int(c)
        h.count, h.sum, h.max, h.min = int(d["count"]), int(d["sum"]), int(d["max"]), int(d["min"])
        return h
