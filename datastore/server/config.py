"""Server configuration: etcd's flag names and defaults, parsed into a frozen value."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from datastore.server.tlsutil import TLSInfo, is_secure, self_cert, url_hosts

log = logging.getLogger("datastore.config")

VERSION = "3.5.17"  # the etcd API version we implement; clients switch features on by it
CLUSTER_VERSION = "3.5.0"
DEFAULT_MAX_REQUEST_BYTES = int(1.5 * 1024 * 1024)
GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets gRPC frames exceed the request limit by this


@dataclass(frozen=True)
class Config:
    name: str = "default"
    data_dir: str = ""
    wal_dir: str = ""  # the raft log's own directory (default: <data dir>/wal)
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
    raft_log_cache_bytes: int = 8 << 20  # newest raft entries kept in memory (the rest on disk)
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"
    compaction_batch_limit: int = 1000  # revisions looked at per physical compaction batch
    compaction_sleep_interval_s: float = 0.01  # pause between those batches
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    log_level: str = "info"
    lease_checkpoint_interval_s: float = 10.0
    watch_progress_notify_interval_s: float = 600.0
    # etcd's --grpc-keepalive-*: the least time between a client's pings (fewer is a GOAWAY
    # too_many_pings), and the server's own pings to idle clients.
    grpc_keepalive_min_time_s: float = 5.0
    grpc_keepalive_interval_s: float = 7200.0
    grpc_keepalive_timeout_s: float = 20.0
    unsafe_no_fsync: bool = False  # etcd's --unsafe-no-fsync: tests and throwaway members only
    strict_reconfig_check: bool = True
    initial_corrupt_check: bool = False  # compare HashKV with peers before serving
    listen_metrics_urls: tuple[str, ...] = ()
    metrics: str = "basic"  # etcd's --metrics: "extensive" adds gRPC handling-time histograms
    listen_client_http_urls: tuple[str, ...] = ()  # the JSON gateway only (etcd 3.5)
    client_tls: TLSInfo = field(default_factory=TLSInfo)
    peer_tls: TLSInfo = field(default_factory=TLSInfo)
    client_auto_tls: bool = False
    peer_auto_tls: bool = False
    self_signed_cert_validity_years: int = 1
    auth_token: str = "simple"  # etcd's --auth-token: "simple" or "jwt,sign-method=...,..."
    auth_token_ttl_s: int = 300  # simple tokens expire after this long unused
    bcrypt_cost: int = 10

    @property
    def resolved_data_dir(self) -> str:
        return self.data_dir or f"{self.name}.datastore"

    @property
    def resolved_wal_dir(self) -> str:
        return self.wal_dir or str(Path(self.resolved_data_dir) / "wal")

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


def split_urls(s: str, flag: str = "") -> tuple[str, ...]:
    """Comma-separated URLs; a bad one is refused in Go's url.Parse words, naming the flag."""
    urls = tuple(u.strip() for u in s.split(",") if u.strip())
    what = f"{flag}: " if flag else ""
    for u in urls:
        try:
            p = urlparse(u)
            p.port  # noqa: B018 - raises on a port that is not a number in 0-65535
        except ValueError:
            if "[" in u and "]" not in u:
                raise ValueError(f"{what}parse {u!r}: missing ']' in host") from None
            port = u.rsplit(":", 1)[-1]
            raise ValueError(f"{what}parse {u!r}: invalid port {':' + port!r} after host") from None
        if p.scheme not in ("http", "https", "unix", "unixs") or not p.netloc:
            raise ValueError(f"{what}{u!r} is not a URL like http://127.0.0.1:2379")
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
    a("--wal-dir", default="", help="path to the dedicated raft log (WAL) directory, on a "
      "disk of its own say (default: <data dir>/wal)")
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
    a("--raft-log-cache-bytes", type=int, default=8 << 20,
      help="memory for the newest raft log entries; older ones are read from disk")
    a("--auto-compaction-mode", default="periodic", choices=["periodic", "revision"])
    a("--auto-compaction-retention", default="0")
    a("--experimental-compaction-batch-limit", type=int, default=1000,
      help="revisions deleted per batch of a background compaction")
    a("--experimental-compaction-sleep-interval", default="10ms",
      help="pause between the batches of a background compaction")
    a("--heartbeat-interval", type=int, default=100, help="milliseconds")
    a("--election-timeout", type=int, default=1000, help="milliseconds")
    a("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    a("--experimental-lease-checkpoint-interval", default="10s")
    a("--experimental-watch-progress-notify-interval", "--watch-progress-notify-interval",
      dest="experimental_watch_progress_notify_interval", default="10m",
      help="how often idle watchers get a progress notification (etcd 3.6 drops "
           "'experimental-' from the name; both are accepted)")
    a("--unsafe-no-fsync", **_BOOL,
      help="do not fsync the raft log: acknowledged writes can be lost on power loss "
           "(tests and throwaway members only)")
    a("--grpc-keepalive-min-time", default="5s",
      help="least time a client should wait between pings (more often is answered by GOAWAY)")
    a("--grpc-keepalive-interval", default="2h", help="how often the server pings an idle client")
    a("--grpc-keepalive-timeout", default="20s", help="how long to wait for a ping's answer")
    a("--listen-metrics-urls", default="", help="serve /health, /version, /metrics over HTTP here")
    a("--metrics", default="basic", choices=["basic", "extensive"],
      help="level of detail of /metrics: 'extensive' adds gRPC handling-time histograms")
    a("--listen-client-http-urls", default="",
      help="serve the JSON gateway (/v3/...), /version and /health here (HTTP/1.1 only)")
    a("--strict-reconfig-check", default=True, type=parse_bool, nargs="?", const=True)
    a("--experimental-initial-corrupt-check", default=False, type=parse_bool, nargs="?",
      const=True, help="compare this member's HashKV with its peers' at start-up and refuse "
                       "to serve on a mismatch")
    # TLS, with etcd's names: client side (client URLs and https metrics URLs) ...
    a("--cert-file", default="", help="client server TLS certificate file")
    a("--key-file", default="", help="client server TLS key file")
    a("--trusted-ca-file", default="",
      help="client CA file; like etcd, giving it also demands client certificates")
    a("--client-cert-auth", **_BOOL, help="demand client certificates signed by --trusted-ca-file")
    a("--auto-tls", **_BOOL, help="client TLS with a generated self-signed certificate")
    a("--client-crl-file", default="",
      help="certificate revocation list (PEM or DER): clients presenting a listed "
           "certificate are refused")
    # ... and peer side
    a("--peer-cert-file", default="", help="peer server TLS certificate file")
    a("--peer-key-file", default="", help="peer server TLS key file")
    a("--peer-trusted-ca-file", default="",
      help="peer CA file: peers' certificates are verified against it (both directions)")
    a("--peer-client-cert-auth", **_BOOL, help="demand peer client certificates")
    a("--peer-auto-tls", **_BOOL, help="peer TLS with a generated self-signed certificate")
    a("--peer-crl-file", default="",
      help="peer certificate revocation list: peers presenting a listed certificate are refused")
    a("--self-signed-cert-validity", type=int, default=1,
      help="years the --auto-tls / --peer-auto-tls certificates are valid")
    # Authentication (etcd's names)
    a("--auth-token", default="simple",
      help="simple, or jwt,sign-method=RS256,priv-key=FILE[,pub-key=FILE][,ttl=5m]")
    a("--auth-token-ttl", type=int, default=300, help="seconds a simple token lives unused")
    a("--bcrypt-cost", type=int, default=10, help="bcrypt cost of password hashes (4-31)")


def parse_bool(v: str) -> bool:
    """Go's strconv.ParseBool, which etcd's boolean flags and environment variables use."""
    low = v.strip().lower()
    if low in ("1", "t", "true", "yes"):
        return True
    if low in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {v!r} (use true or false)")


# A bare flag means true, ``--flag=false`` turns it off, as with Go's flag package.
_BOOL: dict = {"type": parse_bool, "nargs": "?", "const": True, "default": False}

# ---- flags from environment variables (etcd's pkg/flags.SetFlagsFromEnv) -----------------
ENV_PREFIXES = ("ETCD", "DATASTORE")
# ours, read elsewhere (failpoint.py, features.RELEASE_ENV): not flags
INTERNAL_ENV = frozenset({"DATASTORE_FAILPOINT", "DATASTORE_TEST_RELEASE"})


def flag_env_names(option: str) -> list[str]:
    """``--initial-cluster`` -> ``[ETCD_INITIAL_CLUSTER, DATASTORE_INITIAL_CLUSTER]``."""
    stem = option.lstrip("-").upper().replace("-", "_")
    return [f"{p}_{stem}" for p in ENV_PREFIXES]


def apply_env(parser: argparse.ArgumentParser, argv: Sequence[str],
              environ: Mapping[str, str]) -> list[str]:
    """Make ``ETCD_<FLAG>`` / ``DATASTORE_<FLAG>`` variables the defaults of parser's flags.

    Like etcd: a variable whose flag is also on the command line is an error (etcd exits
    with "conflicting environment variable ... is shadowed by corresponding command-line
    flag"); ETCD_/DATASTORE_ variables that name no flag are reported (returned, for the
    caller to log as warnings once logging is set up). ETCD_X and DATASTORE_X with
    different values are an error too.
    """
    explicit = _explicit_dests(parser, argv)
    used: set[str] = set()
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest == "help":
            continue
        found = {n: environ[n] for o in longs for n in flag_env_names(o) if n in environ}
        if not found:
            continue
        used.update(found)
        names = " and ".join(found)
        if action.dest in explicit:
            raise ValueError(f"conflicting environment variable {names} is shadowed by the "
                             f"command-line flag {longs[0]} (unset the variable or drop the flag)")
        if len(set(found.values())) > 1:
            raise ValueError(f"environment variables {names} disagree; set only one of them")
        value = next(iter(found.values()))
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"{names}={value!r}: must be one of {', '.join(action.choices)}")
        if action.type is not None:
            try:
                action.type(value)  # fail here, naming the variable, not at parse time
            except (ValueError, argparse.ArgumentTypeError) as e:
                raise ValueError(f"{names}={value!r}: {e}") from None
        action.default = value  # a string default goes through the flag's type on parse
    return [f"unrecognized environment variable {k}" for k in sorted(environ)
            if k.startswith(tuple(p + "_" for p in ENV_PREFIXES))
            and k not in used and k not in INTERNAL_ENV]


def _explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Flags given on the command line: parse once with every default suppressed."""
    saved = [(a, a.default) for a in parser._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        ns, _ = parser.parse_known_args(list(argv))
    finally:
        for a, d in saved:
            a.default = d
    return set(vars(ns))


def config_from_args(ns: argparse.Namespace) -> Config:
    """The member's configuration; a bad flag raises ValueError with one line naming it."""
    if ns.election_timeout < 5 * ns.heartbeat_interval:
        raise ValueError("--election-timeout must be at least 5 times --heartbeat-interval")
    cfg = _config(ns)
    for urls in cfg.initial_cluster_map().values():  # --initial-cluster's own syntax and URLs
        split_urls(",".join(urls), "--initial-cluster")
    from datastore.auth.tokens import new_token_provider  # reads the key files: refuse early
    new_token_provider(cfg.auth_token, cfg.auth_token_ttl_s)
    return cfg


def _config(ns: argparse.Namespace) -> Config:
    return Config(
        name=ns.name,
        data_dir=ns.data_dir,
        wal_dir=ns.wal_dir,
        listen_client_urls=split_urls(ns.listen_client_urls, "--listen-client-urls"),
        advertise_client_urls=split_urls(ns.advertise_client_urls, "--advertise-client-urls"),
        listen_peer_urls=split_urls(ns.listen_peer_urls, "--listen-peer-urls"),
        initial_advertise_peer_urls=split_urls(ns.initial_advertise_peer_urls,
                                               "--initial-advertise-peer-urls"),
        initial_cluster=ns.initial_cluster,
        initial_cluster_state=ns.initial_cluster_state,
        initial_cluster_token=ns.initial_cluster_token,
        quota_backend_bytes=ns.quota_backend_bytes or 2 * 1024 * 1024 * 1024,
        max_request_bytes=ns.max_request_bytes,
        max_txn_ops=ns.max_txn_ops,
        snapshot_count=ns.snapshot_count,
        snapshot_catchup_entries=ns.experimental_snapshot_catchup_entries,
        raft_log_cache_bytes=max(1, ns.raft_log_cache_bytes),
        auto_compaction_mode=ns.auto_compaction_mode,
        auto_compaction_retention=ns.auto_compaction_retention,
        compaction_batch_limit=max(1, ns.experimental_compaction_batch_limit),
        compaction_sleep_interval_s=parse_duration(ns.experimental_compaction_sleep_interval),
        heartbeat_interval_ms=ns.heartbeat_interval,
        election_timeout_ms=ns.election_timeout,
        log_level=ns.log_level,
        lease_checkpoint_interval_s=parse_duration(ns.experimental_lease_checkpoint_interval),
        watch_progress_notify_interval_s=_progress_notify_interval(
            parse_duration(ns.experimental_watch_progress_notify_interval)),
        unsafe_no_fsync=ns.unsafe_no_fsync,
        grpc_keepalive_min_time_s=parse_duration(ns.grpc_keepalive_min_time),
        grpc_keepalive_interval_s=parse_duration(ns.grpc_keepalive_interval),
        grpc_keepalive_timeout_s=parse_duration(ns.grpc_keepalive_timeout),
        strict_reconfig_check=ns.strict_reconfig_check,
        initial_corrupt_check=ns.experimental_initial_corrupt_check,
        listen_metrics_urls=(split_urls(ns.listen_metrics_urls, "--listen-metrics-urls")
                             if ns.listen_metrics_urls else ()),
        metrics=ns.metrics,
        listen_client_http_urls=(split_urls(ns.listen_client_http_urls, "--listen-client-http-urls")
                                 if ns.listen_client_http_urls else ()),
        client_tls=TLSInfo(cert_file=ns.cert_file, key_file=ns.key_file,
                           trusted_ca_file=ns.trusted_ca_file,
                           client_cert_auth=ns.client_cert_auth, crl_file=ns.client_crl_file),
        peer_tls=TLSInfo(cert_file=ns.peer_cert_file, key_file=ns.peer_key_file,
                         trusted_ca_file=ns.peer_trusted_ca_file,
                         client_cert_auth=ns.peer_client_cert_auth, crl_file=ns.peer_crl_file),
        client_auto_tls=ns.auto_tls,
        peer_auto_tls=ns.peer_auto_tls,
        self_signed_cert_validity_years=ns.self_signed_cert_validity,
        auth_token=ns.auth_token,
        auth_token_ttl_s=ns.auth_token_ttl,
        bcrypt_cost=_bcrypt_cost(ns.bcrypt_cost),
    )


DEFAULT_PROGRESS_NOTIFY_S = 600.0
MIN_PROGRESS_NOTIFY_S = 0.1


def _progress_notify_interval(seconds: float) -> float:
    """etcd: 0 keeps the default (10 minutes); below 100 ms is raised to 100 ms, with a warning."""
    if seconds <= 0:
        return DEFAULT_PROGRESS_NOTIFY_S
    if seconds < MIN_PROGRESS_NOTIFY_S:
        log.warning("adjusting watch progress notify interval to minimum period",
                    extra={"min-watch-progress-notify-interval": "100ms"})
        return MIN_PROGRESS_NOTIFY_S
    return seconds


def _bcrypt_cost(cost: int) -> int:
    """etcd: an out-of-range --bcrypt-cost falls back to the default with a warning."""
    if 4 <= cost <= 31:
        return cost
    log.warning("use default bcrypt cost instead of the invalid given cost",
                extra={"min_cost": 4, "max_cost": 31, "default_cost": 10, "given_cost": cost})
    return 10


def prepare_tls(cfg: Config) -> Config:
    """Make auto-TLS certificates and check every listener's TLS, as etcd does at start-up.

    Returns the config with the generated certificates filled in. Errors (ValueError) use
    etcd's wording, e.g. an https URL without a certificate and key.
    """
    if cfg.self_signed_cert_validity_years <= 0:
        raise ValueError("--self-signed-cert-validity must be at least 1 (years)")
    days = 365 * cfg.self_signed_cert_validity_years
    fixtures = Path(cfg.resolved_data_dir) / "fixtures"
    client, peer = cfg.client_tls, cfg.peer_tls
    if cfg.client_auto_tls:
        if client.empty():
            auto = self_cert(fixtures / "client", url_hosts(cfg.listen_client_urls), days)
            client = replace(auto, trusted_ca_file=client.trusted_ca_file,
                             client_cert_auth=client.client_cert_auth, crl_file=client.crl_file)
        else:
            log.warning("ignoring client auto TLS since certs given")
    if cfg.peer_auto_tls:
        if peer.empty():
            auto = self_cert(fixtures / "peer", url_hosts(cfg.listen_peer_urls), days)
            peer = replace(auto, trusted_ca_file=peer.trusted_ca_file,
                           client_cert_auth=peer.client_cert_auth, crl_file=peer.crl_file)
        else:
            log.warning("ignoring peer auto TLS since certs given")
    for url in cfg.listen_client_urls:
        if is_secure(url) and client.empty():
            raise ValueError(f"TLS key/cert (--cert-file, --key-file) must be provided for "
                             f"client url {url} with HTTPS scheme")
        if not is_secure(url) and not client.empty():
            log.warning("scheme is HTTP while key and cert files are present; ignoring key "
                        "and cert files", extra={"client_url": url})
        if not is_secure(url) and client.client_cert_auth:
            log.warning("scheme is HTTP while --client-cert-auth is enabled; ignoring client "
                        "cert auth for this URL", extra={"client_url": url})
    for url in (*cfg.listen_metrics_urls, *cfg.listen_client_http_urls):
        if is_secure(url) and client.empty():
            raise ValueError(f"cannot listen on TLS for {urlparse(url).netloc}: KeyFile and "
                             f"CertFile are not presented (give --cert-file and --key-file, "
                             f"or --auto-tls)")
    for url in cfg.listen_peer_urls:
        if is_secure(url) and peer.empty():
            raise ValueError(f"cannot listen on TLS for {urlparse(url).netloc}: KeyFile and "
                             f"CertFile are not presented (give --peer-cert-file and "
                             f"--peer-key-file, or --peer-auto-tls)")
        if not is_secure(url) and not peer.empty():
            log.warning("scheme is HTTP while key and cert files are present; ignoring key "
                        "and cert files", extra={"peer_url": url})
        if not is_secure(url) and peer.client_cert_auth:
            log.warning("scheme is HTTP while --peer-client-cert-auth is enabled; ignoring "
                        "client cert auth for this URL", extra={"peer_url": url})
    if not client.empty():
        client.check("--cert-file/--key-file/--trusted-ca-file")
    if not peer.empty():
        peer.check("--peer-cert-file/--peer-key-file/--peer-trusted-ca-file")
    return replace(cfg, client_tls=client, peer_tls=peer)
