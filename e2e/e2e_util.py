"""Shared helpers for end-to-end tests: start real server processes on 127.0.0.1.

The server under test ("target") is datastore by default. ``DS_TARGET=etcd`` makes every
target fixture start a real etcd instead, so the suite can be validated against etcd on
both sides before the datastore server exists.

Readiness is a condition: wait until the client port accepts TCP connections, then until
a Status RPC answers, on a fresh channel per attempt. (ServerProc.wait_ready reuses one
channel, which after a refused first connection sits in gRPC's ~1 s reconnect backoff;
that would dominate the runtime of a suite that starts a fresh server per test.)
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc, etcdctl

TARGET: str = os.environ.get("DS_TARGET", "datastore").strip().lower() or "datastore"
if TARGET not in ("datastore", "etcd"):
    raise RuntimeError(f"DS_TARGET must be 'datastore' or 'etcd', not {TARGET!r}")

#: Member name used for both oracle and target, so `member list` output is comparable.
NODE_NAME = "node0"

ServerFactory = Callable[..., ServerProc]
PairFactory = Callable[..., tuple[ServerProc, ServerProc]]


def target_is_etcd() -> bool:
    return TARGET == "etcd"


def make_proc(kind: str, base: Path, extra: Sequence[str] = ()) -> ServerProc:
    """A not-yet-started server of the given kind ("etcd", "datastore" or "target")."""
    if kind == "target":
        kind = TARGET
    base.mkdir(parents=True, exist_ok=True)
    if kind == "etcd":
        return etcd_proc(base, name=NODE_NAME, extra=list(extra))
    if kind == "datastore":
        return datastore_proc(base, name=NODE_NAME, extra=list(extra))
    raise ValueError(kind)


class Client:
    """gRPC stubs for one server over one channel."""

    def __init__(self, proc: ServerProc) -> None:
        self.proc = proc
        self.channel = grpc.insecure_channel(proc.endpoint)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.maint = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ctl(proc: ServerProc, *args: str, stdin: str | None = None, check: bool = True,
        timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run the real etcdctl 3.4 against one server."""
    return etcdctl(proc.endpoint, *args, stdin=None if stdin is None else stdin.encode(),
                   check=check, timeout=timeout)


def ctl_out(proc: ServerProc, *args: str, stdin: str | None = None) -> str:
    """stdout of a successful etcdctl command (fails the test with stderr otherwise)."""
    r = ctl(proc, *args, stdin=stdin, check=False)
    assert r.returncode == 0, (
        f"etcdctl {' '.join(args)} on {proc.kind} exited {r.returncode}:\n"
        f"{r.stderr.decode(errors='replace')}")
    return r.stdout.decode(errors="replace")
