"""The ``datastore`` command: ``serve`` (the default), ``snapshot restore``, ``bench``, ``version``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from datastore.server.config import (
    VERSION,
    add_serve_arguments,
    apply_env,
    config_from_args,
    prepare_tls,
)

log = logging.getLogger("datastore")


async def _serve(ns: argparse.Namespace) -> int:
    from datastore.api.grpcserver import build_grpc_server
    from datastore.api.http import serve_http
    from datastore.server.etcdserver import EtcdServer
    from datastore.server.transport import PeerTransport

    cfg = prepare_tls(config_from_args(ns))  # auto-TLS certificates live in the data dir
    server = EtcdServer(cfg)
    grpc_server = build_grpc_server(server)
    transport = PeerTransport(server)
    server.transport = transport  # type: ignore[assignment]
    await transport.start()
    await server.start()
    server.cluster_ops.start()
    await grpc_server.start()
    http_servers = await serve_http(server, cfg.listen_metrics_urls)
    log.info("serving client requests", extra={
        "member": cfg.name, "data_dir": cfg.resolved_data_dir,
        "client_urls": list(cfg.listen_client_urls), "member_id": f"{server.member_id:x}",
        "peer_urls": list(cfg.listen_peer_urls), "metrics_urls": list(cfg.listen_metrics_urls),
        "client_tls": not cfg.client_tls.empty(), "peer_tls": not cfg.peer_tls.empty(),
        "version": VERSION})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    for h in http_servers:
        h.close()
    await grpc_server.stop(grace=1.0)
    await server.cluster_ops.stop()
    await transport.stop()
    await server.stop()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    from datastore.logsetup import setup_logging

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        argv = ["serve", *argv]  # like etcd: no subcommand means run the server
    parser = argparse.ArgumentParser(prog="datastore", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run a member (etcd's flags and defaults)")
    add_serve_arguments(serve)
    snap = sub.add_parser("snapshot", help="snapshot tools")
    snap_sub = snap.add_subparsers(dest="snap_cmd", required=True)
    restore = snap_sub.add_parser("restore", help="create a new data dir from a snapshot file")
    restore.add_argument("file")
    add_serve_arguments(restore)
    bench = sub.add_parser("bench", help="load generator speaking the etcd API")
    try:
        from datastore.bench import add_arguments as bench_args
        bench_args(bench)
    except ImportError:  # pragma: no cover
        pass
    sub.add_parser("version", help="print the version")
    env_warnings: list[str] = []
    if argv[0] == "serve":
        # ETCD_<FLAG> / DATASTORE_<FLAG> variables become flag defaults (etcd's behaviour)
        try:
            env_warnings = apply_env(serve, argv[1:], os.environ)
        except ValueError as e:
            print(f"datastore: error: {e}", file=sys.stderr)
            return 2
    ns = parser.parse_args(argv)

    if ns.cmd == "version":
        print(f"datastore Version: {VERSION}")
        return 0
    if ns.cmd == "bench":
        from datastore.bench import run as bench_run
        return bench_run(ns)
    setup_logging(getattr(ns, "log_level", "info"))
    for w in env_warnings:
        log.warning(w)
    try:
        if ns.cmd == "snapshot":
            from datastore.server.restore import restore_snapshot
            restore_snapshot(ns.file, config_from_args(ns))
            return 0
        return asyncio.run(_serve(ns))
    except (ValueError, OSError) as e:
        print(f"datastore: error: {e}", file=sys.stderr)
        return 2
