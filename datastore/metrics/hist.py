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
from decimal import Decimal

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

# prometheus.DefBuckets (client_golang): go-grpc-prometheus's handling-time buckets
DEF_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


def le_label(bound: float) -> str:
    """A bucket bound as client_golang writes it (Go's ``%g`` with the shortest digits:
    ``1``, ``0.005``, ``1.048576e+06``, ``+Inf``): the same ``le`` values as etcd's, so
    series from both line up in one query."""
    if bound == float("inf"):
        return "+Inf"
    d = Decimal(repr(bound)).normalize()  # repr: the shortest digits that round-trip
    _, digits, exp = d.as_tuple()
    exp10 = len(digits) + int(exp) - 1
    if -4 <= exp10 < 6:
        return format(d, "f")
    mant = "".join(map(str, digits))
    mant = mant[0] + ("." + mant[1:] if len(mant) > 1 else "")
    return f"{'-' if bound < 0 else ''}{mant}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"


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
            out.append((le_label(bound), acc))
        return out


def family(name: str, doc: str, labels: Sequence[str],
           series: Iterable[tuple[Sequence[str], Histogram]]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=list(labels))
    for values, h in series:
        fam.add_metric(list(values), h.cumulative(), h.sum)
    return fam


class BareCounter(Metric):
    """A counter named without ``_total``, as etcd has a few
    (``etcd_network_snapshot_send_success``): client_golang exports such a name as it
    is, where prometheus_client would add the suffix. The member's exposition
    (``registry.Exposition``) writes its ``# TYPE`` line with the name unchanged."""

    bare = True

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        super().__init__(name, doc, "counter")
        self._label_names = tuple(labels)

    def add_metric(self, values: Sequence[str], value: float) -> None:
        self.samples.append(Sample(self.name, dict(zip(self._label_names, values, strict=True)),
                                   value))
