"""The operator's /metrics: how reconciling goes, per DatastoreCluster (label ``cluster``,
``namespace/name`` on Kubernetes, the manifest's name locally).

- ``kvoperator_reconcile_duration_seconds{cluster}``: one pass (observe, plan, act, status);
  controller-runtime's reconcile-time buckets;
- ``kvoperator_reconcile_errors_total{cluster}``: passes that raised;
- ``kvoperator_actions_total{cluster,kind,result}``: the actions carried out (kind: the
  planner's, e.g. ``AddLearner``; result: done, waiting, retry, failed);
- ``kvoperator_members{cluster,state}``: the members by state (``healthy``, ``learner``,
  ``unhealthy``: in the member list but not live, ``missing``: a slot of the spec with no
  member), and ``kvoperator_desired_members{cluster}``, the spec's size;
- ``kvoperator_quorum_healthy{cluster}``: 1 while the live voters are a quorum.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from kvoperator.planner import Action, Observed, is_live, live_voters, quorum

# controller-runtime's reconcile_time_seconds buckets
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                     0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5,
                     6, 7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 60)
STATES = ("healthy", "learner", "unhealthy", "missing")


class OperatorMetrics:
    """Recorded once per reconcile pass (nothing here is on a hot path)."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry(auto_describe=True)
        self.duration = Histogram("kvoperator_reconcile_duration_seconds",
                                  "Time one reconcile pass of a cluster took.", ["cluster"],
                                  buckets=RECONCILE_BUCKETS, registry=reg)
        self.errors = Counter("kvoperator_reconcile_errors_total",
                              "Reconcile passes that failed with an error.", ["cluster"], registry=reg)
        self.actions = Counter("kvoperator_actions_total", "Actions the operator carried out, by kind "
                               "and result.", ["cluster", "kind", "result"], registry=reg)
        self.members = Gauge("kvoperator_members", "Members of the cluster by state.",
                             ["cluster", "state"], registry=reg)
        self.desired = Gauge("kvoperator_desired_members", "The cluster's spec.size.", ["cluster"],
                             registry=reg)
        self.quorum = Gauge("kvoperator_quorum_healthy", "1 while the live voting members are a "
                            "quorum, 0 otherwise.", ["cluster"], registry=reg)
        ProcessCollector(registry=reg)

    def observed(self, cluster: str, o: Observed) -> None:
        counts = dict.fromkeys(STATES, 0)
        members = o.members or ()
        for m in members:
            live = is_live(o, m)
            counts["learner" if m.is_learner and live else "healthy" if live else "unhealthy"] += 1
        counts["missing"] = max(0, o.size - len(members))
        for state, n in counts.items():
            self.members.labels(cluster, state).set(n)
        self.desired.labels(cluster).set(o.size)
        voters = sum(1 for m in members if not m.is_learner)
        self.quorum.labels(cluster).set(int(voters > 0 and live_voters(o) >= quorum(voters)))

    def acted(self, cluster: str, a: Action, result: str) -> None:
        self.actions.labels(cluster, a.kind.value, result).inc()

    def forget(self, cluster: str) -> None:
        """The cluster was deleted: its gauges go (its counters stay, as counters do)."""
        for state in STATES:
            _remove(self.members, cluster, state)
        _remove(self.desired, cluster)
        _remove(self.quorum, cluster)


def _remove(g: Gauge, *labels: str) -> None:
    try:
        g.remove(*labels)
    except KeyError:
        pass  # never set
