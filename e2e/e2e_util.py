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

#: The oracle of the differential tests: Debian's etcd 3.4 (default) or the built 3.6
#: (``DS_ORACLE=3.6``; scripts/build_refs.py builds it).
ORACLE: str = os.environ.get("DS_ORACLE", "3.4").strip() or "3.4"
if ORACLE not in ("3.4", "3.6"):
    raise RuntimeError(f"DS_ORACLE must be '3.4' or '3.6', not {ORACLE!r}")


def oracle_binary(version: str | None = None) -> str | None:
    """The etcd binary of an oracle release (None: Debian's 3.4, on PATH); by default
    the one DS_ORACLE names. A test module that follows a later release's rules sets
    ``ORACLE = "3.6"`` (the pair fixtures read it)."""
    if (version or ORACLE) == "3.4":
        return None
    from datastore.testing import refs
    try:
        return str(refs.binary("etcd"))
    except refs.RefError as e:  # CI builds it (scripts/test.sh): never a silent skip
        raise AssertionError(str(e)) from None


#: Member name used for both oracle and target, so `member list` output is comparable.
NODE_NAME = "node0"

ServerFactory = Callable[..., ServerProc]
PairFactory = Callable[..., tuple[ServerProc, ServerProc]]


def target_is_etcd() -> bool:
    return TARGET == "etcd"


def make_proc(kind: str, base: Path, extra: Sequence[str] = (),
              oracle: str | None = None) -> ServerProc:
    """A not-yet-started server of the given kind ("etcd", "datastore" or "target");
    ``oracle`` picks the etcd release ("3.4" or "3.6"; default DS_ORACLE)."""
    if kind == "target":
        kind = TARGET
    base.mkdir(parents=True, exist_ok=True)
    if kind == "etcd":
        return etcd_proc(base, name=NODE_NAME, extra=list(extra), binary=oracle_binary(oracle))
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
