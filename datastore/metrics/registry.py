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


def exposition(reg: CollectorRegistry) -> str:
    return generate_latest(reg).decode()
