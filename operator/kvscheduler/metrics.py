"""The scheduler's /metrics, with kube-scheduler's names where one applies.

- ``scheduler_pending_pods{queue}``: active, backoff, unschedulable (kube-scheduler's
  queues; it also has ``gated``, which this scheduler does not have);
- ``scheduler_schedule_attempts_total{result,profile}``: scheduled, unschedulable, error;
- ``scheduler_scheduling_attempt_duration_seconds{result,profile}``: from taking a pod
  off the queue to its bind applied (or its decision, when unschedulable), with
  kube-scheduler's buckets (1 ms doubling, 15 buckets);
- kvscheduler's own: ``kvscheduler_bind_conflicts_total`` (the pod changed under the
  bind), ``kvscheduler_fenced_binds_total`` (a newer leader owns scheduling),
  ``kvscheduler_bind_errors_total``, ``kvscheduler_is_leader``, ``kvscheduler_terms_total``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from datastore.metrics.hist import Histogram, exponential_buckets, family

if TYPE_CHECKING:
    from kvscheduler.scheduler import Scheduler

RESULTS = ("scheduled", "unschedulable", "error")
ATTEMPT_BUCKETS = exponential_buckets(0.001, 2, 15)


class Attempts:
    """Counted by the scheduler as attempts end (plain ints and cheap histograms)."""

    def __init__(self) -> None:
        self.count = dict.fromkeys(RESULTS, 0)
        self.duration = {r: Histogram(ATTEMPT_BUCKETS) for r in RESULTS}

    def done(self, result: str, seconds: float) -> None:
        self.count[result] += 1
        self.duration[result].observe(seconds)


class SchedulerCollector(Collector):
    def __init__(self, sched: Scheduler) -> None:
        self.s = sched

    def collect(self) -> Iterator[Metric]:
        s, q, st = self.s, self.s.queue, self.s.stats
        profile = s.scheduler_name
        pending = GaugeMetricFamily("scheduler_pending_pods", "Number of pending pods, by the queue "
                                    "type. 'active' means number of pods in activeQ; 'backoff' "
                                    "means number of pods in backoffQ; 'unschedulable' means number "
                                    "of pods in unschedulablePods.", labels=["queue"])
        for name, n in (("active", len(q.active)), ("backoff", len(q.backoff)),
                        ("unschedulable", len(q.unschedulable))):
            pending.add_metric([name], n)
        yield pending
        attempts = CounterMetricFamily("scheduler_schedule_attempts_total",
                                       "Number of attempts to schedule pods, by the result. "
                                       "'unschedulable' means a pod could not be scheduled, while "
                                       "'error' means an internal scheduler problem.",
                                       labels=["result", "profile"])
        for r in RESULTS:
            attempts.add_metric([r, profile], s.attempts.count[r])
        yield attempts
        yield family("scheduler_scheduling_attempt_duration_seconds",
                     "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
                     ["result", "profile"], (([r, profile], s.attempts.duration[r]) for r in RESULTS))
        for name, doc, v in (
                ("kvscheduler_bind_conflicts", "Binds refused because the pod changed since it was "
                 "read (decided again from the new object).", st.bind_conflicts),
                ("kvscheduler_fenced_binds", "Binds refused because this replica's election key was "
                 "gone or replaced (a newer leader schedules).", st.fenced),
                ("kvscheduler_bind_errors", "Bind or status writes that failed to reach the "
                 "datastore (retried).", st.bind_errors),
                ("kvscheduler_terms", "Terms of leadership this replica has started.", st.terms)):
            yield CounterMetricFamily(name, doc, value=v)
        yield GaugeMetricFamily("kvscheduler_is_leader", "1 while this replica holds the election "
                                "and schedules.", value=s.is_leader)


def scheduler_registry(sched: Scheduler) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SchedulerCollector(sched))
    ProcessCollector(registry=reg)
    return reg
