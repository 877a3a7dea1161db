"""The member's exposition is prometheus_client's generate_latest, byte for byte, only
faster; histograms count and format their buckets as client_golang does."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from datastore.api.grpcmetrics import GrpcMetrics
from datastore.metrics.hist import (
    DEF_BUCKETS,
    BareCounter,
    Histogram,
    exponential_buckets,
    family,
    le_label,
)
from datastore.metrics.registry import Exposition


class Tricky(Collector):
    def __init__(self) -> None:
        self.n = 0
        self.h = Histogram(exponential_buckets(0.001, 2, 14))

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("odd_labels", 'help with \\ and\nnewline and "quotes"',
                              labels=["a", "b"])
        g.add_metric(['x"y', "back\\slash\nnl"], self.n)
        g.add_metric(["", "ü"], 1e21)
        yield g
        yield CounterMetricFamily("things_total", "Things.", value=self.n / 3)
        yield family("latency_seconds", "Latency.", ["To"], [(["a1"], self.h)])
        yield GaugeMetricFamily("nan_and_inf", "x", value=float("nan"))


def test_render_is_generate_latest() -> None:
    reg = CollectorRegistry(auto_describe=False)
    tricky = Tricky()
    reg.register(tricky)
    g = GrpcMetrics(extensive=True)
    g.instrument("/etcdserverpb.KV/Put", grpc.unary_unary_rpc_method_handler(lambda r, c: None))
    reg.register(g)
    ProcessCollector(registry=reg)
    exp = Exposition(reg)
    for step in range(3):  # the second and third render from the cache
        tricky.n = step * 7
        tricky.h.observe(0.003 * step)
        g.methods["/etcdserverpb.KV/Put"].started += step
        # process_* values move between two calls: compare without them
        ours = [ln for ln in exp.render().splitlines() if not ln.startswith("process_")]
        theirs = [ln for ln in generate_latest(reg).decode().splitlines()
                  if not ln.startswith("process_")]
        assert ours == theirs


def test_buckets_are_inclusive_and_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 1), ("1", 3), ("+Inf", 4)]
    assert h.count == 4 and h.sum == 8.6


def test_le_labels_as_client_golang_writes_them() -> None:
    # strconv.FormatFloat(f, 'g', -1, 64), as in etcd's /metrics
    assert [le_label(b) for b in DEF_BUCKETS] == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                                  "0.5", "1", "2.5", "5", "10"]
    assert le_label(0.0001) == "0.0001" and le_label(0.00001) == "1e-05"
    assert le_label(524288) == "524288" and le_label(1048576) == "1.048576e+06"
    assert le_label(float("inf")) == "+Inf"


def test_bare_counter_keeps_etcds_name() -> None:
    """etcd's counters named without _total (etcd_network_snapshot_send_success) are
    written as client_golang writes them: no suffix on the TYPE line or the samples."""
    c = BareCounter("etcd_network_snapshot_send_success", "Total number of successful snapshot sends",
                    ["To"])
    c.add_metric(["8e9e05c52164694d"], 2)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed([c]))
    assert Exposition(reg).render() == (
        "# HELP etcd_network_snapshot_send_success Total number of successful snapshot sends\n"
        "# TYPE etcd_network_snapshot_send_success counter\n"
        'etcd_network_snapshot_send_success{To="8e9e05c52164694d"} 2.0\n')


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)
