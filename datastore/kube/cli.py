"""``datastore kube up|down``: arguments and the command's exit codes."""

from __future__ import annotations

import argparse
import os
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
    up.add_argument("--agent-nodes", type=int, default=0,
                    help="nodes run by `datastore kube agent` (pods as local processes; default 0)")
    up.add_argument("--storage-media-type", choices=("protobuf", "json"), default="protobuf",
                    help="how the API server stores objects (json: readable by kvscheduler)")
    up.add_argument("--restore-from", type=Path, default=None, metavar="SNAPSHOT",
                    help="start the storage from an etcd snapshot (`etcdctl snapshot save` of "
                         "etcd or the datastore); needs a --dir without storage data")
    agent = sub.add_parser("agent", help="run pods of agent nodes as local processes (a kubelet "
                                         "stand-in for demos and tests)")
    agent.add_argument("--dir", type=Path, default=None)
    agent.add_argument("--nodes", type=int, default=1, help="nodes to register (default 1)")
    agent.add_argument("--prefix", default="agent", help="node names are PREFIX-<i> (default agent)")
    agent.add_argument("--cpu", default="4", help="each node's allocatable CPU (default 4)")
    agent.add_argument("--memory", default="8Gi", help="each node's allocatable memory (default 8Gi)")
    agent.add_argument("--backoff", type=float, default=10.0,
                       help="restart back-off after the first, doubling to 300 (default 10 s)")
    agent.add_argument("--log-level", default="info", choices=("debug", "info", "warn", "error"))
    shell = sub.add_parser("shell", help="run a command where the agent's pod and Service names "
                                         "resolve, as in a pod (default: $SHELL)")
    shell.add_argument("--dir", type=Path, default=None)
    shell.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    down = sub.add_parser("down", help="stop what `up` started (the data is kept)")
    down.add_argument("--dir", type=Path, default=None)


def run(ns: argparse.Namespace) -> int:
    from datastore.kube import controlplane
    from datastore.testing.refs import RefError

    directory = ns.dir or controlplane.default_dir()
    if ns.kube_cmd == "agent":
        return _agent(ns, directory)
    if ns.kube_cmd == "shell":
        return _shell(ns, directory)
    if ns.kube_cmd == "down":
        if not controlplane.down(directory):
            print(f"datastore kube: nothing was started in {directory}", file=sys.stderr)
            return 1
        print(f"stopped; data kept in {directory / 'storage'}")
        return 0
    opts = controlplane.Options(directory, backend=ns.backend, members=ns.members,
                                nodes=ns.nodes, compaction_interval=ns.compaction_interval,
                                timeout=ns.timeout, agent_nodes=ns.agent_nodes,
                                storage_media_type=ns.storage_media_type,
                                restore_from=ns.restore_from)
    try:
        controlplane.up(opts, log=_progress)
    except (controlplane.KubeError, RefError) as e:
        print(f"datastore kube: error: {e}", file=sys.stderr)
        return 1
    return 0


def _agent(ns: argparse.Namespace, directory: Path) -> int:
    import signal
    import threading

    from datastore.kube.agent.agent import Agent, AgentOptions
    from datastore.kube.agent.client import ApiError
    from datastore.kube.controlplane import KubeError
    from datastore.logsetup import setup_logging

    setup_logging(ns.log_level)
    if ns.nodes < 1:
        print("datastore kube agent: --nodes must be at least 1", file=sys.stderr)
        return 2
    try:
        agent = Agent(AgentOptions(directory, nodes=ns.nodes, prefix=ns.prefix, cpu=ns.cpu,
                                   memory=ns.memory, backoff=ns.backoff))
    except KubeError as e:
        print(f"datastore kube agent: error: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent.run(stop)
    except (ApiError, OSError) as e:
        agent.shutdown()
        print(f"datastore kube agent: error: {e} (is the control plane in {directory} up?)",
              file=sys.stderr)
        return 1
    return 0


def _shell(ns: argparse.Namespace, directory: Path) -> int:
    import json
    import os
    import tempfile

    from datastore.kube.agent.runtime import ENTER

    hosts = directory.resolve() / "agent" / "hosts"
    if not hosts.exists():
        print(f"datastore kube shell: no agent has run in {directory} (start one with "
              f"`datastore kube up --agent-nodes N` or `datastore kube agent`)", file=sys.stderr)
        return 1
    cmd = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    argv = cmd or [os.environ.get("SHELL", "/bin/sh")]
    fd, spec = tempfile.mkstemp(prefix="kube-shell-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"argv": argv, "cwd": os.getcwd(), "hosts": str(hosts), "mounts": []}, f)
    os.execv(sys.executable, [sys.executable, "-I", "-S", str(ENTER), spec, "--remove-spec"])


def _progress(line: str) -> None:
    """A progress line; a reader that went away (``| head``) must not stop the plane."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush stays quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
