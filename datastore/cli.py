"""The ``datastore`` command: ``serve`` (the default), ``snapshot restore``, ``bench``, ``version``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from datastore.server.config import VERSION, add_serve_arguments, config_from_args

log = logging.getLogger("datastore")


async def _serve(ns: argparse.Namespace) -> int:
    from datastore.api.grpcserver import build_grpc_server
    from datastore.api.http import serve_http
    from datastore.server.etcdserver import EtcdServer
    from datastore.server.transport import PeerTransport

    cfg = config_from_args(ns)
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
    ns = parser.parse_args(argv)

    if ns.cmd == "version":
        print(f"datastore Version: {VERSION}")
        return 0
    if ns.cmd == "bench":
        from datastore.bench import run as bench_run
        return bench_run(ns)
    setup_logging(getattr(ns, "log_level", "info"))
    try:
        if ns.cmd == "snapshot":
            from datastore.server.restore import restore_snapshot
            restore_snapshot(ns.file, config_from_args(ns))
            return 0
        return asyncio.run(_serve(ns))
    except (ValueError, OSError) as e:
        print(f"datastore: error: {e}", file=sys.stderr)
        return 2
