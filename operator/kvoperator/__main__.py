"""The ``kvoperator`` command: ``local`` (member processes here) and ``run`` (Kubernetes)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from datastore.client.credentials import credentials
from kvoperator.etcdapi import PASSWORD_ENV, USER_ENV

log = logging.getLogger("kvoperator")


async def _run_until_signal(coro_factory: object) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await coro_factory(stop)  # type: ignore[operator]
    log.info("operator stopped")
    return 0


def _local(ns: argparse.Namespace) -> int:
    from datastore.metrics.serve import split_addr
    from kvoperator.etcdapi import ClientClusterAPI
    from kvoperator.local import LocalPlatform
    from kvoperator.reconcile import Reconciler

    platform = LocalPlatform(Path(ns.manifest), Path(ns.workdir), ns.base_port,
                             crd=Path(ns.crd) if ns.crd else None)
    from kvoperator.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    api = ClientClusterAPI(user=ns.user, password=ns.password)
    rec = Reconciler(platform, api, interval=ns.interval, metrics=metrics)
    log.info("operator started", extra={"platform": "local", "manifest": ns.manifest,
                                        "workdir": str(platform.workdir), "base_port": ns.base_port,
                                        "metrics_addr": ns.metrics_addr})

    async def run(stop: asyncio.Event) -> None:
        from datastore.console.web import Console
        from kvoperator.console import operator_view

        server = None
        console = Console("operator", operator_view(lambda: [rec]))
        if ns.metrics_addr:
            from datastore.metrics.serve import metrics_route, serve_http

            host, port = split_addr(ns.metrics_addr, "--metrics-addr")
            server = await serve_http(host, port, {"/metrics": metrics_route(metrics.registry)},
                                      console=console)
        try:
            await rec.run(stop)
        finally:
            if server is not None:
                server.close()
            await console.close()
            await api.close()
    return asyncio.run(_run_until_signal(run))


def _kube(ns: argparse.Namespace) -> int:
    from kvoperator.kube import run_kubernetes

    tls = None
    if ns.ca_file or ns.cert_file:
        from datastore.client import TLSConfig
        tls = TLSConfig(ns.ca_file, ns.cert_file, ns.key_file)
    from kubernetes.config import ConfigException

    try:
        return asyncio.run(_run_until_signal(
            lambda stop: run_kubernetes(stop, namespace=ns.namespace, kubeconfig=ns.kubeconfig,
                                        interval=ns.interval, health_port=ns.health_port, tls=tls,
                                        user=ns.user, password=ns.password)))
    except ConfigException as e:
        print(f"kvoperator: no Kubernetes API to talk to ({e}); run it in a cluster (in-cluster "
              "config) or pass --kubeconfig FILE", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    from datastore.logsetup import setup_logging

    parser = argparse.ArgumentParser(prog="kvoperator", description=__doc__)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    sub = parser.add_subparsers(dest="cmd", required=True)
    loc = sub.add_parser("local", help="run a DatastoreCluster manifest as local processes")
    loc.add_argument("--manifest", required=True, help="DatastoreCluster YAML; edits are picked up")
    loc.add_argument("--workdir", required=True, help="data dirs, logs and status.yaml go here")
    loc.add_argument("--base-port", type=int, required=True,
                     help="member i: client port P+10i, peer P+10i+1, metrics P+10i+2")
    loc.add_argument("--interval", type=float, default=1.0, help="seconds between passes when idle")
    loc.add_argument("--metrics-addr", default="",
                     help="HOST:PORT to serve /metrics (reconcile durations, actions, members) and "
                     "the console (/dashboard) on")
    loc.add_argument("--crd", default=None, help="validate the manifest against this CRD "
                     "(default: manifests/crd/datastoreclusters.yaml of the checkout, if there)")
    run = sub.add_parser("run", help="reconcile DatastoreCluster objects in a Kubernetes cluster")
    run.add_argument("--namespace", default=None, help="watch one namespace (default: all)")
    run.add_argument("--kubeconfig", default=None, help="default: in-cluster config, then ~/.kube/config")
    run.add_argument("--interval", type=float, default=5.0, help="seconds between resyncs")
    run.add_argument("--health-port", type=int, default=8080, help="serve /healthz here (0.0.0.0)")
    run.add_argument("--ca-file", default=os.environ.get("KVOPERATOR_CA_FILE"),
                     help="CA of the members' client certificates (https client URLs)")
    run.add_argument("--cert-file", default=os.environ.get("KVOPERATOR_CERT_FILE"),
                     help="client certificate the operator presents (client-cert-auth)")
    run.add_argument("--key-file", default=os.environ.get("KVOPERATOR_KEY_FILE"))
    for p in (loc, run):
        p.add_argument("--user", default=os.environ.get(USER_ENV),
                       help=f"NAME[:PASSWORD] for members with auth on (etcdctl's form; default "
                       f"${USER_ENV}); without the password here it is read from ${PASSWORD_ENV}. "
                       "Membership changes and MoveLeader need a user with the root role")
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        ns.user, ns.password = credentials(ns.user, PASSWORD_ENV)
    except ValueError as e:
        parser.error(str(e))
    setup_logging(ns.log_level)
    if ns.cmd == "local":
        from datastore.metrics.serve import split_addr

        if ns.metrics_addr:
            try:
                split_addr(ns.metrics_addr, "--metrics-addr")
            except ValueError as e:
                parser.error(str(e))
        return _local(ns)
    return _kube(ns)


if __name__ == "__main__":
    sys.exit(main())
