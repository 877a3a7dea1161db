"""``kvscheduler run`` (one scheduler replica) and ``kvscheduler demo`` (the flow end to end).

    kvscheduler run --endpoints 127.0.0.1:2379,127.0.0.1:22379 [--lease-ttl 10]
    kvscheduler demo [--endpoints ...] [--pods 60]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from datastore.client import Client
from datastore.client.credentials import credentials
from datastore.console.web import Console
from datastore.logsetup import TextFormatter
from datastore.metrics.serve import metrics_route, serve_http, split_addr
from kvscheduler import objects as obj
from kvscheduler.console import scheduler_view
from kvscheduler.metrics import scheduler_registry
from kvscheduler.scheduler import ELECTION_PREFIX, Scheduler, default_identity

# The scheduler's user when the datastore has auth on (``--user`` and its default).
USER_ENV, PASSWORD_ENV = "KVSCHEDULER_USER", "KVSCHEDULER_PASSWORD"


def _endpoints(s: str) -> list[str]:
    eps = [e.strip() for e in s.split(",") if e.strip()]
    if not eps:
        raise SystemExit("kvscheduler: --endpoints needs at least one HOST:PORT")
    return eps


async def _run(a: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Client(_endpoints(a.endpoints), timeout=a.timeout, user=a.user,
                      password=a.password) as c:
        s = Scheduler(c, scheduler_name=a.scheduler_name, identity=a.identity, election=a.election,
                      lease_ttl=a.lease_ttl, max_inflight=a.max_inflight)
        server = None
        console = Console("scheduler", scheduler_view(s))
        if a.metrics_addr:
            host, port = split_addr(a.metrics_addr, "--metrics-addr")
            server = await serve_http(host, port, {
                "/metrics": metrics_route(scheduler_registry(s)),
                "/healthz": lambda: (200, "text/plain; charset=utf-8", "ok\n")}, console=console)
        try:
            await s.run(stop)
        finally:
            if server is not None:
                server.close()
            await console.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kvscheduler",
                                 description="A list-watch pod scheduler on the etcd API.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one scheduler replica (the elected one schedules)")
    r.add_argument("--endpoints", default="127.0.0.1:2379",
                   help="comma-separated HOST:PORT list (as etcdctl)")
    r.add_argument("--scheduler-name", default=obj.DEFAULT_SCHEDULER,
                   help="schedule pods whose spec.schedulerName is this")
    r.add_argument("--identity", default=default_identity(), help="this replica's name in the election")
    r.add_argument("--election", default=ELECTION_PREFIX, help="election key prefix")
    r.add_argument("--lease-ttl", type=int, default=10,
                   help="leader lease TTL in seconds: how long a dead leader blocks scheduling")
    r.add_argument("--max-inflight", type=int, default=32, help="bind Txns in flight at once")
    r.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    r.add_argument("--user", default=os.environ.get(USER_ENV),
                   help=f"NAME[:PASSWORD] when the datastore has auth on (etcdctl's form; default "
                   f"${USER_ENV}); without the password here it is read from ${PASSWORD_ENV}")
    r.add_argument("--metrics-addr", default="",
                   help="HOST:PORT to serve /metrics (kube-scheduler's names), /healthz and the "
                        "console (/dashboard) on")
    r.add_argument("--log-level", default="info")
    d = sub.add_parser("demo", help="start a datastore (or use --endpoints), create nodes and pods, schedule")
    d.add_argument("--endpoints", default=None, help="use this datastore/etcd instead of an embedded one")
    d.add_argument("--pods", type=int, default=60, help="schedulable web pods to create (plus a few special)")
    d.add_argument("--scheduler-name", default=obj.DEFAULT_SCHEDULER,
                   help="the pods' spec.schedulerName (on a real control plane: not default-scheduler, "
                        "which kube-scheduler serves)")
    d.add_argument("--log-level", default="warning")
    a = ap.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    logging.basicConfig(level=a.log_level.upper(), handlers=[handler])
    if a.cmd == "run":
        try:
            a.user, a.password = credentials(a.user, PASSWORD_ENV)
        except ValueError as e:
            ap.error(str(e))
        if a.metrics_addr:
            try:
                split_addr(a.metrics_addr, "--metrics-addr")
            except ValueError as e:
                ap.error(str(e))
        asyncio.run(_run(a))
        return 0
    from kvscheduler.demo import demo
    return demo(a.endpoints, a.pods, a.scheduler_name)


if __name__ == "__main__":
    sys.exit(main())
