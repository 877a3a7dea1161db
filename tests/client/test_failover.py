"""Endpoint failover and clientv3's retry rule."""

from __future__ import annotations

import grpc
import pytest

from datastore import errors as etcd_errors
from datastore.client import Client
from datastore.client.connection import Retry, moves_on, safe_to_retry
from datastore.embed import EmbeddedServer
from datastore.testing.procs import free_port
from tests.client.conftest import run


def _err(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(("code", "details", "moves", "read_retried", "write_retried"), [
    # the connection could not be made: nothing was sent
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: "
     "UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused", True, True, True),
    # rejected up front by the member
    (grpc.StatusCode.UNAVAILABLE, etcd_errors.ErrNoLeader.message, True, True, True),
    (grpc.StatusCode.UNAVAILABLE, etcd_errors.ErrNotSupportedForLearner.message, True, True, True),
    # etcd 3.6's (and ours) code for the learner refusal: the same failover
    (grpc.StatusCode.FAILED_PRECONDITION, etcd_errors.ErrNotSupportedForLearner.message,
     True, True, True),
    # the connection broke mid-call: a write may have been applied
    (grpc.StatusCode.UNAVAILABLE, "Socket closed", True, True, False),
    (grpc.StatusCode.UNAVAILABLE, etcd_errors.ErrTimeout.message, True, True, False),
    (grpc.StatusCode.UNAVAILABLE, etcd_errors.ErrLeaderChanged.message, True, True, False),
    # answers about the request itself: no failover, no retry
    (grpc.StatusCode.INVALID_ARGUMENT, etcd_errors.ErrEmptyKey.message, False, False, False),
    (grpc.StatusCode.OUT_OF_RANGE, etcd_errors.ErrCompacted.message, False, False, False),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", False, False, False),
])
def test_retry_rule(code: grpc.StatusCode, details: str, moves: bool, read_retried: bool,
                    write_retried: bool) -> None:
    e = _err(code, details)
    assert moves_on(e) is moves
    assert safe_to_retry(e, Retry.REPEATABLE) is read_retried
    assert safe_to_retry(e, Retry.NON_REPEATABLE) is write_retried


def test_dead_endpoint_is_skipped_for_reads_and_writes(datastore_server_session: EmbeddedServer) -> None:
    dead = f"127.0.0.1:{free_port()}"

    async def body() -> None:
        async with Client([dead, datastore_server_session.endpoint], timeout=10) as c:
            assert c.pool.current == dead
            await c.put("/fo/k", "v")  # refused connection: never sent, so retried elsewhere
            assert c.pool.current == datastore_server_session.endpoint
            assert (await c.get("/fo/k")).kvs[0].value == b"v"

    run(body())


def test_all_endpoints_down_fails_within_timeout() -> None:
    async def body() -> None:
        async with Client([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], timeout=1.0) as c:
            with pytest.raises(Exception) as ei:
                await c.get("k")
            assert getattr(ei.value, "code", None) in (grpc.StatusCode.UNAVAILABLE,
                                                       grpc.StatusCode.DEADLINE_EXCEEDED)
    run(body(), timeout=20)
