"""The member's own metrics, with etcd's names, types, labels and buckets, built from its
state and counters when ``/metrics`` is scraped (nothing here runs per request).

Where the name says ``_total`` on a gauge (``etcd_server_proposals_committed_total``,
``etcd_debugging_mvcc_keys_total``, ...) that is etcd's choice, kept so that its dashboards
and alerts work unchanged.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from datastore.metrics.hist import BareCounter, family
from datastore.server.config import CLUSTER_VERSION, VERSION
from datastore.server.features import release

if TYPE_CHECKING:
    from datastore.server.etcdserver import EtcdServer
    from datastore.server.transport import PeerTransport

WATCH_METHOD = "/etcdserverpb.Watch/Watch"


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _info(name: str, doc: str, label: str, value: str) -> GaugeMetricFamily:
    """etcd's ``X{label="value"} 1`` gauges (version, id)."""
    g = GaugeMetricFamily(name, doc, labels=[label])
    g.add_metric([value], 1)
    return g


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class MemberCollector(Collector):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    def collect(self) -> Iterator[Metric]:
        yield from self._server()
        yield from self._disk()
        yield from self._mvcc()
        yield from self._lease()
        transport = self.s.transport
        if transport is not None:
            yield from self._network(transport)

    def _server(self) -> Iterator[Metric]:
        s, st = self.s, self.s.stats
        yield _gauge("etcd_server_has_leader",
                     "Whether or not a leader exists. 1 is existence, 0 is not.", s.leader_id != 0)
        yield _gauge("etcd_server_is_leader",
                     "Whether or not this member is a leader. 1 if is, 0 otherwise.", s.is_leader)
        yield _gauge("etcd_server_is_learner",
                     "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                     s.member_id in s.storage.conf_state.learners)
        yield _counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen.",
                       st.leader_changes)
        yield _counter("etcd_server_heartbeat_send_failures_total",
                       "The total number of leader heartbeat send failures (likely overloaded "
                       "from slow disk).", st.heartbeat_send_failures)
        yield _gauge("etcd_server_snapshot_apply_in_progress_total",
                     "1 if the server is applying the incoming snapshot. 0 if none.",
                     st.snapshot_apply_in_progress)
        yield _gauge("etcd_server_proposals_committed_total",
                     "The total number of consensus proposals committed.", s.storage.hard_state.commit)
        yield _gauge("etcd_server_proposals_applied_total",
                     "The total number of consensus proposals applied.", s.applier.applied_index)
        yield _gauge("etcd_server_proposals_pending",
                     "The current number of pending proposals to commit.", s.pending_proposals)
        yield _counter("etcd_server_proposals_failed_total", "The total number of failed proposals seen.",
                       st.proposals_failed)
        yield _counter("etcd_server_read_indexes_failed_total",
                       "The total number of failed read indexes seen.", st.read_indexes_failed)
        yield _counter("etcd_server_slow_read_indexes_total",
                       "The total number of pending read indexes not in sync with leader's or "
                       "timed out read index requests.", st.slow_read_indexes)
        yield _counter("etcd_server_slow_apply_total",
                       "The total number of slow apply requests (likely overloaded from slow disk).",
                       st.slow_applies)
        yield _counter("etcd_debugging_server_lease_expired_total",
                       "The total number of expired leases.", st.lease_expired)
        yield _gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.",
                     s.cfg.quota_backend_bytes)
        yield _info("etcd_server_version",
                    "Which version is running. 1 for 'server_version' label with current version.",
                    "server_version", VERSION)
        yield _info("etcd_cluster_version",
                    "Which version is running. 1 for 'cluster_version' label with current cluster "
                    "version", "cluster_version", CLUSTER_VERSION.rsplit(".", 1)[0])
        # The datastore's own release and agreed cluster version (docs/upgrade.md), apart
        # from the etcd API version above that clients see.
        yield _info("datastore_server_release", "The datastore release this member runs.",
                    "release", release())
        yield _info("datastore_cluster_version",
                    "The cluster version the members agreed on through the log.",
                    "cluster_version", str(s.cluster_version))
        yield _info("etcd_server_id",
                    "Server or member ID in hexadecimal format. 1 for 'server_id' label with "
                    "current ID.", "server_id", f"{s.member_id:x}")
        yield _gauge("datastore_raft_log_cache_bytes",
                     "Memory held by the newest raft log entries (older ones are on disk only).",
                     s.storage.cache_bytes)
        yield _gauge("datastore_raft_log_cache_entries",
                     "Raft log entries held in memory.", s.storage.cache_entries)
        yield _counter("datastore_raft_log_disk_read_entries_total",
                       "Raft log entries read back from disk (older than the memory held).",
                       s.storage.disk_read_entries)
        yield _gauge("os_fd_used", "The number of used file descriptors.", _open_fds())
        yield _gauge("os_fd_limit", "The file descriptor limit.",
                     resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    def _disk(self) -> Iterator[Metric]:
        st = self.s.stats
        yield family("etcd_disk_wal_fsync_duration_seconds",
                     "The latency distributions of fsync called by WAL.", [], [([], st.wal_fsync)])
        yield family("etcd_disk_backend_commit_duration_seconds",
                     "The latency distributions of commit called by backend.", [],
                     [([], st.backend_commit)])
        yield family("etcd_disk_backend_defrag_duration_seconds",
                     "The latency distribution of backend defragmentation.", [], [([], st.defrag)])
        yield family("etcd_disk_backend_snapshot_duration_seconds",
                     "The latency distribution of backend snapshots.", [], [([], st.snapshot)])
        yield _gauge("etcd_disk_defrag_inflight",
                     "Whether or not defrag is active on the member. 1 means active, 0 means not.",
                     st.defrag_inflight)

    def _mvcc(self) -> Iterator[Metric]:
        s, kv = self.s, self.s.kv
        yield _gauge("etcd_mvcc_db_total_size_in_bytes",
                     "Total size of the underlying database physically allocated in bytes.",
                     s.backend.size() + s.wal.size())
        yield _gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
                     "Total size of the underlying database logically in use in bytes.",
                     s.backend.size_in_use())
        yield _counter("etcd_mvcc_range_total", "Total number of ranges seen by this member.",
                       kv.ranges)
        yield _counter("etcd_mvcc_put_total", "Total number of puts seen by this member.", kv.puts)
        yield _counter("etcd_mvcc_delete_total", "Total number of deletes seen by this member.",
                       kv.deletes)
        yield _counter("etcd_mvcc_txn_total", "Total number of txns seen by this member.", kv.txns)
        # etcd 3.4's names for the same counters, which etcd 3.5 still exports
        for op, n in (("range", kv.ranges), ("put", kv.puts), ("delete", kv.deletes),
                      ("txn", kv.txns)):
            yield _counter(f"etcd_debugging_mvcc_{op}_total",
                           f"Total number of {op}s seen by this member.", n)
        yield _gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", len(kv.index))
        yield _gauge("etcd_debugging_mvcc_total_put_size_in_bytes",
                     "The total size of put kv pairs seen by this member.", kv.put_bytes)
        yield _gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.",
                     kv.current_rev)
        yield _gauge("etcd_debugging_mvcc_compact_revision",
                     "The revision of the last compaction in store.", max(kv.compact_rev, 0))
        hub = s.hub
        yield _gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.",
                     sum(1 for _ in hub.synced_watchers()) + len(hub.unsynced))
        yield _gauge("etcd_debugging_mvcc_slow_watcher_total",
                     "Total number of unsynced slow watchers.", len(hub.unsynced))
        yield _counter("etcd_debugging_mvcc_events_total",
                       "Total number of events sent by this member.", hub.events_sent)
        watch = s.grpc_metrics.methods.get(WATCH_METHOD) if s.grpc_metrics is not None else None
        yield _gauge("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.",
                     watch.started - watch.handled() if watch is not None else 0)

    def _lease(self) -> Iterator[Metric]:
        le = self.s.lessor
        yield _counter("etcd_debugging_lease_granted_total",
                       "The total number of granted leases.", le.granted)
        yield _counter("etcd_debugging_lease_revoked_total",
                       "The total number of revoked leases.", le.revoked)
        yield _counter("etcd_debugging_lease_renewed_total",
                       "The number of renewed leases seen by the leader.", le.renewed)
        yield family("etcd_debugging_lease_ttl_total", "Bucketed histogram of lease TTLs.", [],
                     [([], le.granted_ttls)])

    def _network(self, t: PeerTransport) -> Iterator[Metric]:
        def by_peer(name: str, doc: str, label: str, counts: dict[int, int]) -> CounterMetricFamily:
            # every current peer at zero too, so that rate() over it is 0 rather than empty
            c = CounterMetricFamily(name, doc, labels=[label])
            for peer in sorted(set(counts) | set(t.peers)):
                c.add_metric([f"{peer:x}"], counts.get(peer, 0))
            return c
        yield by_peer("etcd_network_peer_sent_bytes_total", "The total number of bytes sent to peers.",
                      "To", t.sent_bytes)
        yield by_peer("etcd_network_peer_received_bytes_total",
                      "The total number of bytes received from peers.", "From", t.received_bytes)
        yield by_peer("etcd_network_peer_sent_failures_total", "The total number of send failures "
                      "from peers.", "To", t.sent_failures)
        yield by_peer("datastore_network_peer_sent_batches_total",
                      "Stream writes to peers (each carries one or more raft messages).", "To",
                      t.sent_batches)
        yield by_peer("datastore_network_peer_sent_messages_total",
                      "Raft messages sent to peers.", "To", t.sent_messages)
        yield by_peer("datastore_network_peer_superseded_messages_total",
                      "Raft messages not sent because a later one to the same peer, in the same "
                      "write, said the same (acks, commit-only appends).", "To", t.superseded)
        yield by_peer("datastore_network_peer_received_batches_total",
                      "Stream reads from peers.", "From", t.received_batches)
        yield by_peer("datastore_network_peer_received_messages_total",
                      "Raft messages received from peers.", "From", t.received_messages)
        yield family("etcd_network_peer_round_trip_time_seconds", "Round-Trip-Time histogram "
                     "between peers", ["To"],
                     (([f"{peer:x}"], h) for peer, h in sorted(t.rtt.items())))
        local = f"{self.s.member_id:x}"
        active = GaugeMetricFamily("etcd_network_active_peers", "The current number of active "
                                   "peer connections.", labels=["Local", "Remote"])
        for peer_id, p in sorted(t.peers.items()):
            active.add_metric([local, f"{peer_id:x}"], 1 if p.active_since else 0)
        yield active
        lost = CounterMetricFamily("etcd_network_disconnected_peers_total", "The total number of "
                                   "disconnected peers.", labels=["Local", "Remote"])
        for peer_id, n in sorted(t.disconnects.items()):
            lost.add_metric([local, f"{peer_id:x}"], n)
        yield lost
        yield from self._snapshots(t)

    @staticmethod
    def _snapshots(t: PeerTransport) -> Iterator[Metric]:
        """etcd's peer snapshot transfer families (counters without ``_total``, as etcd's)."""
        snap = t.snapshots
        for name, doc, label, counts in (
                ("etcd_network_snapshot_send_success", "Total number of successful snapshot sends",
                 "To", snap.sent),
                ("etcd_network_snapshot_send_failures", "Total number of snapshot send failures",
                 "To", snap.send_failures),
                ("etcd_network_snapshot_receive_success",
                 "Total number of successful snapshot receives", "From", snap.received),
                ("etcd_network_snapshot_receive_failures",
                 "Total number of snapshot receive failures", "From", snap.receive_failures)):
            c = BareCounter(name, doc, [label])
            for peer, n in sorted(counts.items()):
                c.add_metric([peer], n)
            yield c
        for name, doc, label, counts in (
                ("etcd_network_snapshot_send_inflights_total",
                 "Total number of inflight snapshot sends", "To", snap.sending),
                ("etcd_network_snapshot_receive_inflights_total",
                 "Total number of inflight snapshot receives", "From", snap.receiving)):
            g = GaugeMetricFamily(name, doc, labels=[label])
            for peer, n in sorted(counts.items()):
                g.add_metric([peer], n)
            yield g
        yield family("etcd_network_snapshot_send_total_duration_seconds",
                     "Total latency distributions of v3 snapshot sends", ["To"],
                     (([peer], h) for peer, h in sorted(snap.send_seconds.items())))
        yield family("etcd_network_snapshot_receive_total_duration_seconds",
                     "Total latency distributions of v3 snapshot receives", ["From"],
                     (([peer], h) for peer, h in sorted(snap.receive_seconds.items())))
