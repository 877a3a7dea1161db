"""The ``datastore`` command: ``serve`` (the default), ``snapshot restore``, ``bench``, ``version``,
``grpc-proxy start``, ``gateway start``, ``kube up|down``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time

from datastore.logsetup import exit_now
from datastore.server.config import (
    VERSION,
    add_serve_arguments,
    apply_env,
    config_from_args,
)
from datastore.storage.backend import CorruptDataError

log = logging.getLogger("datastore")


async def _serve(ns: argparse.Namespace) -> int:
    from datastore.member import start_member

    member = await start_member(config_from_args(ns))
    server, cfg = member.server, member.cfg
    log.info("serving client requests", extra={
        "member": cfg.name, "data_dir": cfg.resolved_data_dir,
        "client_urls": list(cfg.listen_client_urls), "member_id": f"{server.member_id:x}",
        "peer_urls": list(cfg.listen_peer_urls), "metrics_urls": list(cfg.listen_metrics_urls),
        "client_http_urls": list(cfg.listen_client_http_urls),
        "client_tls": not cfg.client_tls.empty(), "peer_tls": not cfg.peer_tls.empty(),
        "version": VERSION})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def first_signal(sig: signal.Signals) -> None:
        log.info("received signal; shutting down", extra={"signal": sig.name})
        # A second SIGTERM/SIGINT ends the process at once, whatever the loop is doing:
        # everything acknowledged is already fsynced, so this is a crash, nothing lost.
        for s in STOP_SIGNALS:
            loop.remove_signal_handler(s)
            signal.signal(s, signal.SIG_DFL)
        _start_watchdog(SHUTDOWN_BOUND_S)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, first_signal, sig)
    await stop.wait()
    # Shielded from nothing: the watchdog thread, not this loop, bounds the shutdown, so
    # neither raft activity nor a stalled disk can keep the process alive.
    await member.stop()
    log.info("stopped")
    return 0


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SHUTDOWN_BOUND_S = 10.0  # then exit anyway, as after a crash (acknowledged data is durable)


def _start_watchdog(bound_s: float) -> None:
    """A thread that ends the process if the shutdown has not finished within ``bound_s``."""
    def watch() -> None:
        time.sleep(bound_s)  # a deadline, not synchronisation
        log.error("shutdown did not finish in time; exiting without finishing it",
                  extra={"bound_s": bound_s})
        exit_now(1)

    threading.Thread(target=watch, name="shutdown-watchdog", daemon=True).start()


def version_text() -> str:
    """``datastore --version``: the release, and the etcd API version clients see."""
    from datastore.server.features import release

    return (f"datastore Version: {release()}\netcd API Version: {VERSION}\n"
            f"Python Version: {sys.version.split()[0]}")


def _restore(ns: argparse.Namespace) -> int:
    from datastore.server.restore import restore_snapshot
    from datastore.util.progress import Progress

    try:
        with Progress("restoring", mode=ns.progress, interval=ns.progress_interval) as progress:
            done = restore_snapshot(ns.file, config_from_args(ns),
                                    skip_hash_check=ns.skip_hash_check, progress=progress,
                                    bump_revision=ns.bump_revision,
                                    mark_compacted=ns.mark_compacted)
            progress.summary(done.summary())
    except KeyboardInterrupt:  # the restore removed what it had written
        print("datastore: interrupted; nothing was restored", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``datastore`` command; a reader that goes away (``| head``) ends it quietly."""
    from datastore.util.progress import run_quietly

    return run_quietly(lambda: _main(argv))


def _main(argv: list[str] | None = None) -> int:
    from datastore.logsetup import setup_logging

    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:  # etcd --version
        print(version_text())
        return 0
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
    restore.add_argument("--skip-hash-check", action="store_true",
                         help="restore a db file copied from a data dir (it has no trailing hash)")
    restore.add_argument("--bump-revision", type=int, default=0, metavar="N",
                         help="how much to increase the latest revision after restore (with "
                              "--mark-compacted: clients' old revisions then read as compacted, "
                              "so watches and informers start over instead of going back)")
    restore.add_argument("--mark-compacted", action="store_true",
                         help="mark the latest revision after restore as the point of "
                              "scheduled compaction (required if --bump-revision > 0, "
                              "disallowed otherwise)")
    restore.add_argument("--progress", choices=("auto", "tty", "lines", "none"), default="auto",
                         help="progress on stderr: live if stderr is a terminal, else a line "
                              "every few seconds (default auto); the summary line is always printed")
    restore.add_argument("--progress-interval", type=float, default=5.0,
                         help="seconds between progress lines when stderr is not a terminal")
    add_serve_arguments(restore)
    bench = sub.add_parser("bench", help="load generator speaking the etcd API")
    try:
        from datastore.bench import add_arguments as bench_args
        bench_args(bench)
    except ImportError:  # pragma: no cover
        pass
    sub.add_parser("version", help="print the version")
    from datastore.proxy.cli import add_gateway_arguments, add_grpc_proxy_arguments
    add_grpc_proxy_arguments(sub.add_parser("grpc-proxy", help="etcd's gRPC proxy"))
    add_gateway_arguments(sub.add_parser("gateway", help="etcd's L4 (TCP) gateway"))
    from datastore.kube.cli import add_arguments as kube_args
    kube_args(sub.add_parser("kube", help="a local Kubernetes control plane on the datastore"))
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
        print(version_text())
        return 0
    if ns.cmd == "bench":
        from datastore.bench import run as bench_run
        return bench_run(ns)
    if ns.cmd == "kube":
        from datastore.kube.cli import run as kube_run
        return kube_run(ns)
    setup_logging(getattr(ns, "log_level", "info"))
    for w in env_warnings:
        log.warning(w)
    try:
        if ns.cmd == "grpc-proxy":
            from datastore.proxy.cli import run_grpc_proxy
            return asyncio.run(run_grpc_proxy(ns))
        if ns.cmd == "gateway":
            from datastore.proxy.cli import run_tcp_gateway
            return asyncio.run(run_tcp_gateway(ns))
        if ns.cmd == "snapshot":
            return _restore(ns)
        return asyncio.run(_serve(ns))
    except (ValueError, OSError) as e:
        print(f"datastore: error: {e}", file=sys.stderr)
        return 2
    except CorruptDataError as e:  # refuse to serve damaged data, with what to do
        log.critical("refusing to start: data dir is corrupt", extra={"error": str(e)})
        return 3
