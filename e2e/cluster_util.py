"""Multi-member datastore clusters of real processes on 127.0.0.1, for e2e tests.

Every wait is a condition polled with a deadline (never a sleep as synchronisation).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import grpc

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import ServerProc, datastore_proc, free_port

T = TypeVar("T")
FAST = ["--heartbeat-interval", "50", "--election-timeout", "500"]


def wait_for(cond: Callable[[], T | None], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.05) -> T:
    """Poll ``cond`` until it returns something truthy; return it (or fail after timeout)."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except (grpc.RpcError, OSError) as e:
            last_exc = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last error: {last_exc})")
        time.sleep(interval)  # poll interval of the condition above


def status(proc: ServerProc, timeout: float = 1.0) -> pb.StatusResponse:
    with grpc.insecure_channel(proc.endpoint) as ch:
        return rpc_pb2_grpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=timeout)


def put(proc: ServerProc, key: bytes, value: bytes) -> None:
    with grpc.insecure_channel(proc.endpoint) as ch:
        rpc_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=key, value=value), timeout=10)


def values(proc: ServerProc, prefix: bytes) -> dict[bytes, bytes]:
    """The member's own (serializable) view of the keys under ``prefix``."""
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    with grpc.insecure_channel(proc.endpoint) as ch:
        r = rpc_pb2_grpc.KVStub(ch).Range(
            pb.RangeRequest(key=prefix, range_end=end, serializable=True), timeout=10)
    return {kv.key: kv.value for kv in r.kvs}


def hash_kv(proc: ServerProc) -> tuple[int, int]:
    """(revision, hash) of the member's store at its current revision."""
    with grpc.insecure_channel(proc.endpoint) as ch:
        r = rpc_pb2_grpc.MaintenanceStub(ch).HashKV(pb.HashKVRequest(revision=0), timeout=10)
    return r.header.revision, r.hash


class Cluster:
    """N datastore members started with one --initial-cluster."""

    def __init__(self, base: Path, n: int = 3, extra: Sequence[str] = ()) -> None:
        self.base = base
        self.extra = [*FAST, *extra]
        ports = [(free_port(), free_port()) for _ in range(n)]
        spec = ",".join(f"m{i}=http://127.0.0.1:{pp}" for i, (_, pp) in enumerate(ports))
        self.procs: list[ServerProc] = [
            datastore_proc(base, f"m{i}", extra=self.extra, client_port=cp, peer_port=pp,
                           initial_cluster=spec)
            for i, (cp, pp) in enumerate(ports)]
        self.all_procs: list[ServerProc] = list(self.procs)

    def start(self) -> Cluster:
        for p in self.procs:
            p.launch()
        for p in self.procs:
            p.wait_ready()
        self.wait_leader()
        return self

    def stop(self) -> None:
        for p in self.all_procs:
            p.stop()

    def alive(self) -> list[ServerProc]:
        return [p for p in self.procs if p.popen is not None and p.popen.poll() is None]

    def leader_id(self, procs: Sequence[ServerProc] | None = None) -> int | None:
        """The leader every given (default: live) member agrees on, or None."""
        ids = set()
        for p in procs if procs is not None else self.alive():
            try:
                ids.add(status(p).leader)
            except grpc.RpcError:
                return None
        if len(ids) == 1 and 0 not in ids:
            return ids.pop()
        return None

    def wait_leader(self, procs: Sequence[ServerProc] | None = None,
                    timeout: float = 30.0) -> int:
        return wait_for(lambda: self.leader_id(procs), timeout, "one agreed leader")

    def member_id(self, proc: ServerProc) -> int:
        return status(proc).header.member_id

    def leader(self) -> ServerProc:
        lid = self.wait_leader()
        return next(p for p in self.alive() if self.member_id(p) == lid)

    def followers(self) -> list[ServerProc]:
        lid = self.wait_leader()
        return [p for p in self.alive() if self.member_id(p) != lid]

    def new_member(self, name: str, extra: Sequence[str] = ()) -> ServerProc:
        """A not-yet-started member joining with --initial-cluster-state existing."""
        cp, pp = free_port(), free_port()
        members = [p for p in self.procs]
        spec = ",".join([*(f"{p.name}=http://127.0.0.1:{p.peer_port}" for p in members),
                         f"{name}=http://127.0.0.1:{pp}"])
        proc = datastore_proc(self.base, name, extra=[*self.extra, *extra], client_port=cp,
                              peer_port=pp, initial_cluster=spec, state="existing")
        self.all_procs.append(proc)
        return proc


def log_lines(proc: ServerProc, msg: str, **fields: object) -> list[dict[str, object]]:
    """The member's structured log records with this message (and these field values)."""
    out = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if msg not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by kill -9, or not ours
        if rec.get("msg") == msg and all(rec.get(k) == v for k, v in fields.items()):
            out.append(rec)
    return out


def log_has(proc: ServerProc, msg: str, **fields: object) -> bool:
    return bool(log_lines(proc, msg, **fields))


# A tiny raft log, so that a member that was down needs a snapshot to catch up ...
SMALL_LOG = ["--snapshot-count", "50", "--experimental-snapshot-catchup-entries", "10"]
# ... and a slow stream (test-only knobs: ~80 chunks of 256 bytes, 50 ms apart), so that a
# transfer is still in progress when a test sees its first progress line.
SLOW_STREAM = {"DATASTORE_SNAPSHOT_CHUNK_BYTES": "256",
               "DATASTORE_SNAPSHOT_CHUNK_DELAY_S": "0.05"}
LAG_VALUE = b"v" * 100


def lag_behind(c: Cluster, acked: dict[bytes, bytes]) -> tuple[ServerProc, ServerProc]:
    """Stop a follower and write enough (under ``k/``) that it needs a snapshot; returns
    (it, leader). ``acked`` gets every acknowledged write."""
    leader = c.leader()
    lagging = c.followers()[0]
    put(leader, b"k/early", LAG_VALUE)
    acked[b"k/early"] = LAG_VALUE
    lagging.stop()
    for i in range(150):
        key = f"k/{i:04d}".encode()
        put(leader, key, LAG_VALUE)
        acked[key] = LAG_VALUE
    return lagging, leader
