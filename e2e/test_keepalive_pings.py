"""Client keepalive pings, as kube-apiserver's etcd client sends them (every 30 s, with or
without calls in flight), are accepted down to ``--grpc-keepalive-min-time`` (etcd's 5 s
default); gRPC core's own default would answer anything under 5 minutes with GOAWAY
too_many_pings and break every open watch."""

from __future__ import annotations

import queue
import threading
import time

import grpc

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.testing.procs import ServerProc


def _pinging_channel(endpoint: str, every_ms: int) -> grpc.Channel:
    return grpc.insecure_channel(endpoint, options=[
        ("grpc.keepalive_time_ms", every_ms),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle stream
        ("grpc.http2.min_time_between_pings_ms", every_ms),
    ])


def _idle_watch_survives(server: ServerProc, every_ms: int, idle_s: float) -> str | None:
    """Open a watch on a pinging channel, stay idle, then write: None if the event arrives
    on the same stream, else how the stream ended."""
    events: queue.Queue[object] = queue.Queue()
    channel = _pinging_channel(server.endpoint, every_ms)
    requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
    requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"k")))

    def reqs():  # type: ignore[no-untyped-def]
        while (r := requests.get()) is not None:
            yield r

    call = rpc_pb2_grpc.WatchStub(channel).Watch(reqs())

    def read() -> None:
        try:
            for resp in call:
                events.put(resp)
        except grpc.RpcError as e:
            events.put(e)

    threading.Thread(target=read, daemon=True).start()
    created = events.get(timeout=30)
    assert getattr(created, "created", False), created
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline:  # idle: only pings cross the connection
        try:
            ended = events.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        return f"stream ended while idle: {ended}"
    with grpc.insecure_channel(server.endpoint) as other:
        rpc_pb2_grpc.KVStub(other).Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=10)
    got = events.get(timeout=30)
    requests.put(None)
    call.cancel()
    channel.close()
    if isinstance(got, grpc.RpcError):
        return f"stream ended: {got.code()} {got.details()}"
    assert [e.kv.key for e in got.events] == [b"k"], got  # type: ignore[attr-defined]
    return None


def test_pings_every_six_seconds_are_accepted(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    assert _idle_watch_survives(server, every_ms=6000, idle_s=40) is None


def test_pings_more_often_than_the_minimum_get_goaway(server_factory) -> None:  # type: ignore[no-untyped-def]
    # The same client against a member that asks for a minute between pings: the policy
    # is enforced (and so the test above would see a GOAWAY if the server refused pings).
    server = server_factory(extra=["--grpc-keepalive-min-time", "60s"])
    ended = _idle_watch_survives(server, every_ms=6000, idle_s=40)
    assert ended is not None and "UNAVAILABLE" in ended, ended
