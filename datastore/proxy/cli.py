"""Flags and entry points of ``datastore grpc-proxy start`` and ``datastore gateway start``
(etcd's names and defaults where they apply)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

log = logging.getLogger("datastore.proxy")


def add_grpc_proxy_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="proxy_cmd", required=True)
    s = sub.add_parser("start", help="start the gRPC proxy")
    a = s.add_argument
    a("--endpoints", default="127.0.0.1:2379", help="comma-separated cluster client endpoints")
    a("--listen-addr", default="127.0.0.1:23790", help="address the proxy listens on")
    a("--metrics-addr", default="",
      help="http://HOST:PORT for /metrics (coalescing and cache counters) and /health")
    a("--cert", default="", help="client certificate for the cluster (TLS upstream)")
    a("--key", default="", help="client key for the cluster")
    a("--cacert", default="", help="CA bundle that verifies the cluster's certificates")
    a("--cert-file", default="", help="certificate the proxy serves clients with")
    a("--key-file", default="", help="key the proxy serves clients with")
    a("--trusted-ca-file", default="", help="CA for client certificates (demands them)")
    a("--no-range-cache", action="store_true", help="forward every serializable Range")
    a("--log-level", default="info", choices=["debug", "info", "warn", "error"])


def add_gateway_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="gateway_cmd", required=True)
    s = sub.add_parser("start", help="start the L4 (TCP) gateway")
    a = s.add_argument
    a("--endpoints", default="127.0.0.1:2379", help="comma-separated cluster client endpoints")
    a("--listen-addr", default="127.0.0.1:23790", help="address the gateway listens on")
    a("--retry-delay", default="1m0s",
      help="how long an endpoint that refused a connection is left out")
    a("--log-level", default="info", choices=["debug", "info", "warn", "error"])


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_grpc_proxy(ns: argparse.Namespace) -> int:
    from datastore.client.connection import TLSConfig
    from datastore.gateway.server import Gateway
    from datastore.proxy.grpcproxy import GrpcProxy, ProxyConfig, parse_endpoints
    from datastore.server.tlsutil import TLSInfo

    upstream = None
    if ns.cacert or ns.cert or any(e.startswith("https://") for e in ns.endpoints.split(",")):
        upstream = TLSConfig(ca_file=ns.cacert or None, cert_file=ns.cert or None,
                             key_file=ns.key or None)
    creds = None
    if ns.cert_file or ns.key_file:
        info = TLSInfo(cert_file=ns.cert_file, key_file=ns.key_file,
                       trusted_ca_file=ns.trusted_ca_file)
        info.check("--cert-file/--key-file/--trusted-ca-file")
        creds = info.server_credentials()
    proxy = GrpcProxy(ProxyConfig(parse_endpoints(ns.endpoints), ns.listen_addr, upstream, creds,
                                  range_cache=not ns.no_range_cache))
    port = await proxy.start()
    gw = None
    if ns.metrics_addr:
        async def fallback(method: str, target: str) -> tuple[int, str, str]:
            path = target.split("?", 1)[0]
            if method != "GET":
                return 405, "text/plain; charset=utf-8", "Method Not Allowed\n"
            if path == "/metrics":
                return 200, "text/plain; version=0.0.4", proxy.stats.render()
            if path == "/health":
                return 200, "application/json", '{"health":"true","reason":""}'
            return 404, "text/plain; charset=utf-8", "404 page not found\n"
        # the JSON gateway through the proxy comes for free: it dials the proxy itself
        target = ns.listen_addr.rsplit(":", 1)[0] + f":{port}"
        gw = Gateway(target, None, fallback)  # (with TLS on the proxy, /v3 answers UNAVAILABLE)
        await gw.listen(ns.metrics_addr if "://" in ns.metrics_addr else f"http://{ns.metrics_addr}")
    log.info("grpc-proxy serving", extra={"listen_addr": ns.listen_addr, "port": port,
                                          "endpoints": proxy.pool.endpoints,
                                          "metrics_addr": ns.metrics_addr})
    await _until_signalled()
    if gw is not None:
        await gw.close()
    await proxy.stop()
    return 0


async def run_tcp_gateway(ns: argparse.Namespace) -> int:
    from datastore.proxy.tcpgateway import TcpGateway
    from datastore.server.config import parse_duration

    gw = TcpGateway([e for e in ns.endpoints.split(",") if e.strip()], ns.listen_addr,
                    retry_delay=parse_duration(ns.retry_delay))
    port = await gw.start()
    log.info("gateway serving", extra={"listen_addr": ns.listen_addr, "port": port,
                                       "endpoints": [r.addr for r in gw.remotes]})
    await _until_signalled()
    await gw.stop()
    return 0
