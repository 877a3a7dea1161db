"""The member's counters and latency histograms, kept in plain ints on the paths that
see the events (per write batch or rarer, never a lock) and exported by
:mod:`datastore.metrics.member` when ``/metrics`` is scraped. Buckets are etcd's."""

from __future__ import annotations

from datastore.metrics.hist import Histogram, exponential_buckets

SLOW_APPLY_S = 0.1  # etcd's warnApplyDuration: an apply this slow counts as slow_apply


class ServerStats:
    def __init__(self) -> None:
        self.leader_changes = 0
        self.proposals_failed = 0
        self.read_indexes_failed = 0  # rounds lost to a leader change (then sent again)
        self.slow_read_indexes = 0  # reads that timed out, and answers to rounds no one awaits
        self.slow_applies = 0
        self.heartbeat_send_failures = 0
        self.lease_expired = 0
        self.defrag_inflight = 0
        self.snapshot_apply_in_progress = 0
        # fsync of the raft log (one per Ready that must sync), in the raft I/O thread
        self.wal_fsync = Histogram(exponential_buckets(0.001, 2, 14))
        # the apply batch's write to the state db (etcd: the bbolt backend commit)
        self.backend_commit = Histogram(exponential_buckets(0.001, 2, 14))
        self.defrag = Histogram(exponential_buckets(0.1, 2, 13))
        self.snapshot = Histogram(exponential_buckets(0.01, 2, 17))
