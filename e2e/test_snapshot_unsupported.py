"""A follower that cannot receive streamed snapshots (a release before them) is not retried
without end: the leader says so once per interval and keeps serving.

Member m2 of a 3-member cluster is reached by its peers through a small gRPC proxy on its
advertised peer URL. The proxy passes the peer protocol through but answers
``SendSnapshot`` with UNIMPLEMENTED and reports no release, as a release from before
streamed snapshots does, and counts the SendSnapshot calls. m2 falls behind the compacted
log, so the leader must send it a snapshot: it tries (once, or a few times when a write
fails before UNIMPLEMENTED is read), logs one warning, and does not try again while the
writes go on. Then the proxy lets snapshots through and m2 reports a release (it was upgraded): the
leader's version monitor notices within seconds, the leader tries again and m2 catches up.
"""

from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cluster_util import Cluster, hash_kv, put, values, wait_for
from e2e_util import target_is_etcd
from test_rolling_upgrade import log_count

from datastore.api.raftpb import raft_pb2
from datastore.testing.procs import ServerProc, free_port

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="datastore clusters only")

SMALL_LOG = ["--snapshot-count", "50", "--experimental-snapshot-catchup-entries", "10"]
SERVICE = "/raftpb.RaftTransport/"
WARNING = ("cannot send a snapshot: the member runs a release that cannot receive streamed "
           "snapshots (before 0.13.0); it stays behind until it is upgraded")


class PeerProxy:
    """Forwards the peer protocol to ``target`` as bytes; SendSnapshot only when allowed."""

    def __init__(self, port: int, target: str) -> None:
        self.allow_snapshots = False
        self.snapshot_calls = 0
        self._lock = threading.Lock()
        self._ch = grpc.insecure_channel(target)
        self._server = grpc.server(futures.ThreadPoolExecutor(32))
        self._server.add_generic_rpc_handlers([self])
        self._server.add_insecure_port(f"127.0.0.1:{port}")

    def start(self) -> PeerProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0)
        self._ch.close()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]
        if not method.startswith(SERVICE):
            return None
        name = method[len(SERVICE):]
        if name in ("Send", "SendSnapshot"):
            def streamed(requests: Any, ctx: grpc.ServicerContext) -> bytes:
                if name == "SendSnapshot":
                    with self._lock:
                        self.snapshot_calls += 1
                    if not self.allow_snapshots:  # what grpc answers for an unknown method
                        ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
                return self._ch.stream_unary(method)(requests, timeout=None)
            return grpc.stream_unary_rpc_method_handler(streamed)

        def unary(request: bytes, ctx: grpc.ServicerContext) -> bytes:
            answer = self._ch.unary_unary(method)(request, timeout=10)
            if name == "Members" and not self.allow_snapshots:
                r = raft_pb2.MembersResponse.FromString(answer)
                r.ClearField("release")  # an old release reports none
                r.ClearField("cluster_version")
                answer = r.SerializeToString()
            return answer
        return grpc.unary_unary_rpc_method_handler(unary)


def behind_proxy(proc: ServerProc) -> int:
    """Make ``proc`` listen for peers on a port of its own; its advertised peer URL (the
    one its peers dial) is left to the proxy. Returns the port it listens on."""
    real = free_port()
    i = proc.argv.index("--listen-peer-urls")
    proc.argv[i + 1] = f"http://127.0.0.1:{real}"
    return real


def test_leader_does_not_retry_a_snapshot_the_follower_cannot_take(tmp_path: Path) -> None:
    c = Cluster(tmp_path, extra=SMALL_LOG)
    m0, m1, m2 = c.procs
    proxy = PeerProxy(m2.peer_port, f"127.0.0.1:{behind_proxy(m2)}").start()
    try:
        c.start()
        assert m2.stop() == 0
        live = [m0, m1]
        n = 0

        def write(count: int) -> None:
            nonlocal n
            for _ in range(count):
                put(live[n % 2], f"/k/{n:05d}".encode(), b"v")
                n += 1
        write(200)  # four times --snapshot-count: m2 needs a snapshot
        m2.launch().wait_ready(60)
        wait_for(lambda: sum(log_count(p, WARNING) for p in live) == 1, 60, "the warning")
        tries = proxy.snapshot_calls  # a write can fail before the answer is read: a few
        # the cluster serves on; raft keeps asking for m2's snapshot on every heartbeat,
        # and the leader answers from what it knows instead of another transfer (a leader
        # change on a loaded machine gives the new leader tries of its own)
        write(200)
        assert proxy.snapshot_calls <= tries + 3, (tries, proxy.snapshot_calls)
        assert sum(log_count(p, WARNING) for p in live) <= 2
        # m2 "upgraded": it reports its release and takes snapshots
        proxy.allow_snapshots = True
        wait_for(lambda: values(m2, b"/k/") == values(m0, b"/k/"), 60, "m2 caught up")
        wait_for(lambda: len({hash_kv(p) for p in c.procs}) == 1, 60, "equal HashKV")
        assert proxy.snapshot_calls >= 2
    finally:
        c.stop()
        proxy.stop()
