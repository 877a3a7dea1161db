"""``datastore kube up|down``: arguments and the command's exit codes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datastore.kube.backends import BACKENDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kube_cmd", required=True)
    up = sub.add_parser("up", help="start a local control plane on the datastore")
    up.add_argument("--dir", type=Path, default=None,
                    help="where state, logs, data and the kubeconfig live (default ./kube.datastore)")
    up.add_argument("--members", type=int, default=1, help="storage members (default 1)")
    up.add_argument("--nodes", type=int, default=3, help="kwok fake nodes (default 3)")
    up.add_argument("--backend", choices=BACKENDS, default="datastore",
                    help="the storage: the datastore, etcd 3.6, etcd 3.4 or kine/SQLite (to compare)")
    up.add_argument("--compaction-interval", default="5m",
                    help="the API server's --etcd-compaction-interval (default 5m)")
    up.add_argument("--timeout", type=float, default=240.0,
                    help="seconds to wait for everything to be ready (default 240)")
    down = sub.add_parser("down", help="stop what `up` started (the data is kept)")
    down.add_argument("--dir", type=Path, default=None)


def run(ns: argparse.Namespace) -> int:
    from datastore.kube import controlplane
    from datastore.testing.refs import RefError

    directory = ns.dir or controlplane.default_dir()
    if ns.kube_cmd == "down":
        if not controlplane.down(directory):
            print(f"datastore kube: nothing was started in {directory}", file=sys.stderr)
            return 1
        print(f"stopped; data kept in {directory / 'storage'}")
        return 0
    opts = controlplane.Options(directory, backend=ns.backend, members=ns.members,
                                nodes=ns.nodes, compaction_interval=ns.compaction_interval,
                                timeout=ns.timeout)
    try:
        controlplane.up(opts, log=lambda line: print(line, flush=True))
    except (controlplane.KubeError, RefError) as e:
        print(f"datastore kube: error: {e}", file=sys.stderr)
        return 1
    return 0
