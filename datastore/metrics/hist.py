"""A histogram that costs a bisect and two adds per observation.

prometheus_client's ``Histogram.observe`` takes a lock and walks its buckets; the member
observes on paths that run per write batch or per request, so it keeps plain counts here
and exports them at scrape time (``family``). Observations come from one thread (the
event loop, or the raft I/O thread for fsyncs); a scrape reads the counts without a lock,
so a sample may miss an observation in flight, never corrupt one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# prometheus.DefBuckets (client_golang): go-grpc-prometheus's handling-time buckets
DEF_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """client_golang's ExponentialBuckets: ``count`` upper bounds from ``start``."""
    return tuple(start * factor**i for i in range(count))


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, v: float) -> None:
        # le is inclusive: the first bound >= v
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += n
            out.append((floatToGoString(bound), acc))
        return out


def family(name: str, doc: str, labels: Sequence[str],
           series: Iterable[tuple[Sequence[str], Histogram]]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=list(labels))
    for values, h in series:
        fam.add_metric(list(values), h.cumulative(), h.sum)
    return fam
