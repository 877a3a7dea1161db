"""One Prometheus registry per member: its collectors plus the process's."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from datastore.metrics.member import MemberCollector

if TYPE_CHECKING:
    from datastore.server.etcdserver import EtcdServer

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # etcd's promhttp answers the 0.0.4 text format


class _VirtualMemoryMax(Collector):
    """client_golang's process collector has this one and prometheus_client's has not."""

    def collect(self) -> Iterator[Metric]:
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        yield GaugeMetricFamily("process_virtual_memory_max_bytes",
                                "Maximum amount of virtual memory available in bytes.",
                                value=float(2**64 - 1 if soft == resource.RLIM_INFINITY else soft))


def member_registry(server: EtcdServer) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MemberCollector(server))
    if server.grpc_metrics is not None:
        reg.register(server.grpc_metrics)
    ProcessCollector(registry=reg)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
    reg.register(_VirtualMemoryMax())
    PlatformCollector(registry=reg)  # python_info: the runtime, as etcd's go_info
    GCCollector(registry=reg)
    return reg


class Exposition:
    """``generate_latest`` for one registry, with each series' ``name{labels}`` rendered once.

    prometheus_client escapes and validates every label of every sample on every scrape;
    a member has about 1,200 series (every gRPC method at every code, as etcd exports
    them), which made a scrape cost ~12 ms of the event loop. A member's series rarely
    change, so their rendered names are kept (by name and label values) and only the
    values are formatted. The output is byte-for-byte ``generate_latest``'s (a unit test
    holds it to that), except that a ``hist.BareCounter`` keeps its name without
    ``_total`` on its ``# TYPE`` line, as etcd's page has it; a family of another type,
    or with OpenMetrics-only or timestamped samples, is left to ``generate_latest`` itself.
    """

    def __init__(self, reg: CollectorRegistry) -> None:
        self.reg = reg
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    def _series_text(self, name: str, labels: dict[str, str]) -> str:
        key = (name, tuple(labels.items()))
        text = self._series.get(key)
        if text is None:
            if len(self._series) > MAX_CACHED_SERIES:  # label values that keep changing
                self._series.clear()
            m = Metric(name, "", "gauge")
            m.add_sample(name, labels, 0.0)
            line = generate_latest(_Families([m])).decode().splitlines()[-1]
            text = self._series[key] = line.rsplit(" ", 1)[0]
        return text

    def render(self) -> str:
        out: list[str] = []
        series = self._series_text
        for metric in self.reg.collect():
            name, typ = metric.name, metric.type
            if typ not in ("counter", "gauge", "histogram") or any(
                    s.timestamp is not None or s.name.endswith(("_created", "_gsum", "_gcount"))
                    for s in metric.samples):
                out.append(generate_latest(_Families([metric])).decode())
                continue
            if typ == "counter" and not getattr(metric, "bare", False):
                name += "_total"
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            out.append(f"# HELP {name} {doc}\n# TYPE {name} {typ}\n")
            out.extend([f"{series(s.name, s.labels)} {floatToGoString(s.value)}\n"
                        for s in metric.samples])
        return "".join(out)


class _Families(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


MAX_CACHED_SERIES = 100_000
