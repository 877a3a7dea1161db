"""Server configuration: etcd's flag names and defaults, parsed into a frozen value."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from urllib.parse import urlparse

VERSION = "3.5.17"  # the etcd API version we implement; clients switch features on by it
CLUSTER_VERSION = "3.5.0"
DEFAULT_MAX_REQUEST_BYTES = int(1.5 * 1024 * 1024)
GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets gRPC frames exceed the request limit by this


@dataclass(frozen=True)
class Config:
    name: str = "default"
    data_dir: str = ""
    listen_client_urls: tuple[str, ...] = ("http://localhost:2379",)
    advertise_client_urls: tuple[str, ...] = ("http://localhost:2379",)
    listen_peer_urls: tuple[str, ...] = ("http://localhost:2380",)
    initial_advertise_peer_urls: tuple[str, ...] = ("http://localhost:2380",)
    initial_cluster: str = ""
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    quota_backend_bytes: int = 2 * 1024 * 1024 * 1024
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_txn_ops: int = 128
    snapshot_count: int = 100_000
    snapshot_catchup_entries: int = 5_000
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    log_level: str = "info"
    lease_checkpoint_interval_s: float = 10.0
    watch_progress_notify_interval_s: float = 600.0
    strict_reconfig_check: bool = True
    listen_metrics_urls: tuple[str, ...] = ()

    @property
    def resolved_data_dir(self) -> str:
        return self.data_dir or f"{self.name}.datastore"

    @property
    def election_ticks(self) -> int:
        return max(2, self.election_timeout_ms // self.heartbeat_interval_ms)

    @property
    def min_lease_ttl(self) -> int:
        """etcd: ceil(((3 * election ticks) / 2) * heartbeat interval) seconds."""
        ms = ((3 * self.election_ticks) // 2) * self.heartbeat_interval_ms
        return max(1, -(-ms // 1000))

    def initial_cluster_map(self) -> dict[str, list[str]]:
        spec = self.initial_cluster or ",".join(
            f"{self.name}={u}" for u in self.initial_advertise_peer_urls)
        out: dict[str, list[str]] = {}
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, url = part.partition("=")
            if not sep or not url:
                raise ValueError(f"--initial-cluster: {part!r} is not NAME=URL")
            out.setdefault(name, []).append(url)
        return out


def split_urls(s: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in s.split(",") if u.strip())
    for u in urls:
        p = urlparse(u)
        if p.scheme not in ("http", "https", "unix", "unixs") or not p.netloc:
            raise ValueError(f"{u!r} is not a URL like http://127.0.0.1:2379")
    return urls


def parse_duration(s: str, default_unit_hours: bool = False) -> float:
    """'1h', '30m', '90s', '1.5h' -> seconds; a bare number is hours for compaction retention."""
    s = s.strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s) * (3600 if default_unit_hours else 1)
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", s):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    if total == 0 and s not in ("0", "0s"):
        raise ValueError(f"cannot parse duration {s!r}")
    return total


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--name", default="default", help="human-readable name for this member")
    a("--data-dir", default="", help="path to the data directory (default: <name>.datastore)")
    a("--listen-client-urls", default="http://localhost:2379")
    a("--advertise-client-urls", default="http://localhost:2379")
    a("--listen-peer-urls", default="http://localhost:2380")
    a("--initial-advertise-peer-urls", default="http://localhost:2380")
    a("--initial-cluster", default="", help="NAME=PEER_URL,... for bootstrapping")
    a("--initial-cluster-state", default="new", choices=["new", "existing"])
    a("--initial-cluster-token", default="etcd-cluster")
    a("--quota-backend-bytes", type=int, default=0, help="raise NOSPACE above this (0 = 2 GiB)")
    a("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    a("--max-txn-ops", type=int, default=128)
    a("--snapshot-count", type=int, default=100_000)
    a("--experimental-snapshot-catchup-entries", type=int, default=5_000,
      help="entries kept after a log compaction for slow followers to catch up")
    a("--auto-compaction-mode", default="periodic", choices=["periodic", "revision"])
    a("--auto-compaction-retention", default="0")
    a("--heartbeat-interval", type=int, default=100, help="milliseconds")
    a("--election-timeout", type=int, default=1000, help="milliseconds")
    a("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    a("--experimental-lease-checkpoint-interval", default="10s")
    a("--experimental-watch-progress-notify-interval", default="10m")
    a("--listen-metrics-urls", default="", help="serve /health, /version, /metrics over HTTP here")
    a("--strict-reconfig-check", default=True, type=lambda v: v.lower() in ("1", "true", "yes"))


def config_from_args(ns: argparse.Namespace) -> Config:
    if ns.election_timeout < 5 * ns.heartbeat_interval:
        raise ValueError("--election-timeout must be at least 5 times --heartbeat-interval")
    return Config(
        name=ns.name,
        data_dir=ns.data_dir,
        listen_client_urls=split_urls(ns.listen_client_urls),
        advertise_client_urls=split_urls(ns.advertise_client_urls),
        listen_peer_urls=split_urls(ns.listen_peer_urls),
        initial_advertise_peer_urls=split_urls(ns.initial_advertise_peer_urls),
        initial_cluster=ns.initial_cluster,
        initial_cluster_state=ns.initial_cluster_state,
        initial_cluster_token=ns.initial_cluster_token,
        quota_backend_bytes=ns.quota_backend_bytes or 2 * 1024 * 1024 * 1024,
        max_request_bytes=ns.max_request_bytes,
        max_txn_ops=ns.max_txn_ops,
        snapshot_count=ns.snapshot_count,
        snapshot_catchup_entries=ns.experimental_snapshot_catchup_entries,
        auto_compaction_mode=ns.auto_compaction_mode,
        auto_compaction_retention=ns.auto_compaction_retention,
        heartbeat_interval_ms=ns.heartbeat_interval,
        election_timeout_ms=ns.election_timeout,
        log_level=ns.log_level,
        lease_checkpoint_interval_s=parse_duration(ns.experimental_lease_checkpoint_interval),
        watch_progress_notify_interval_s=parse_duration(
            ns.experimental_watch_progress_notify_interval),
        strict_reconfig_check=ns.strict_reconfig_check,
        listen_metrics_urls=split_urls(ns.listen_metrics_urls) if ns.listen_metrics_urls else (),
    )
