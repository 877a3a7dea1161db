"""Build the client-facing gRPC server with every etcd service registered."""

from __future__ import annotations

from urllib.parse import urlparse

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from datastore.api.acceptors import HOT_METHODS, HotAcceptors
from datastore.api.auth import AuthService
from datastore.api.cluster import ClusterService
from datastore.api.dispatch import HandlerCollector, MethodTable
from datastore.api.election import ElectionService
from datastore.api.etcdserverpb import rpc_pb2_grpc as g
from datastore.api.grpcmetrics import GrpcMetrics
from datastore.api.kv import KVService
from datastore.api.learner import is_learner
from datastore.api.lease import LeaseService
from datastore.api.lock import LockService, SelfClient
from datastore.api.maintenance import MaintenanceService
from datastore.api.v3electionpb import v3election_pb2_grpc
from datastore.api.v3lockpb import v3lock_pb2_grpc
from datastore.api.watch import WatchService, add_watch_service
from datastore.server.config import GRPC_OVERHEAD_BYTES
from datastore.server.crl import RevocationList
from datastore.server.etcdserver import EtcdServer
from datastore.server.tlsutil import is_secure


def listen_address(url: str) -> str:
    p = urlparse(url)
    if p.scheme not in ("http", "https"):
        raise ValueError(f"unsupported listen URL {url!r}: use http://HOST:PORT or https://HOST:PORT")
    return p.netloc


def build_grpc_server(server: EtcdServer) -> tuple[grpc.aio.Server, HotAcceptors]:
    """The server (not started) and its acceptors for the hot methods, to start after it."""
    cfg = server.cfg
    srv = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", cfg.max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_concurrent_streams", 2**31 - 1),
        # Clients may ping without calls in flight (etcd's clients, kube-apiserver's every
        # 30 s), as often as --grpc-keepalive-min-time; gRPC core's default would refuse
        # anything under 5 minutes with GOAWAY too_many_pings.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(cfg.grpc_keepalive_min_time_s * 1000)),
        ("grpc.keepalive_time_ms", int(cfg.grpc_keepalive_interval_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(cfg.grpc_keepalive_timeout_s * 1000)),
        ("grpc.so_reuseport", 0),
    ])
    server.grpc_metrics = GrpcMetrics(extensive=cfg.metrics == "extensive")
    collected = HandlerCollector()
    g.add_KVServicer_to_server(KVService(server), collected)
    add_watch_service(WatchService(server), collected)  # sends pre-encoded events as they are
    g.add_LeaseServicer_to_server(LeaseService(server), collected)
    g.add_ClusterServicer_to_server(ClusterService(server), collected)
    g.add_MaintenanceServicer_to_server(MaintenanceService(server), collected)
    g.add_AuthServicer_to_server(AuthService(server), collected)
    # etcd's lock and election services run recipes through the member's client of itself.
    self_client = SelfClient(server)
    v3lock_pb2_grpc.add_LockServicer_to_server(LockService(server, self_client), collected)
    v3election_pb2_grpc.add_ElectionServicer_to_server(ElectionService(server, self_client), collected)
    # The standard gRPC health service; like etcd's, the server ("") reports SERVING.
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), collected)
    # Undecodable requests refused as etcd does, and the learner gate, in one method table.
    # --client-crl-file applies to https client URLs only (plain ones present no certificate).
    crl = RevocationList(cfg.client_tls.crl_file) if cfg.client_tls.crl_file else None
    table = MethodTable(collected.handlers, lambda: is_learner(server), server.grpc_metrics, crl)
    srv.add_generic_rpc_handlers((table,))
    acceptors = HotAcceptors(srv, {m: table.per_call(m) for m in HOT_METHODS})
    for url in cfg.listen_client_urls:
        try:
            if is_secure(url):  # prepare_tls made sure the certificate and key exist
                srv.add_secure_port(listen_address(url), cfg.client_tls.server_credentials())
            else:
                srv.add_insecure_port(listen_address(url))
        except RuntimeError:  # gRPC's "Failed to bind": say it as etcd's net.Listen does
            raise OSError(f"listen tcp {listen_address(url)}: bind: address already in use "
                          "or not an address of this host") from None
    return srv, acceptors
