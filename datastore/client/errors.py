"""Errors raised by ``datastore.client``.

Every failed RPC surfaces as a :class:`ClientError` carrying the gRPC status code and
etcd's status message (``details``), so callers can match either. A few outcomes that
callers commonly branch on get their own subclass.
"""

from __future__ import annotations

import grpc

from datastore import errors as etcd_errors

__all__ = [
    "ClientClosedError", "ClientError", "CompactedError", "ElectionNotLeaderError", "LeaseLostError",
    "LeaseNotFoundError", "LockTimeoutError", "NoLeaderError", "NotSupportedForLearnerError",
    "from_rpc_error",
]


class ClientError(Exception):
    """An RPC failed. ``code`` is the grpc.StatusCode, ``details`` etcd's message."""

    def __init__(self, code: grpc.StatusCode, details: str, endpoint: str = "") -> None:
        self.code = code
        self.details = details
        self.endpoint = endpoint
        where = f" (endpoint {endpoint})" if endpoint else ""
        super().__init__(f"{code.name}: {details}{where}")


class CompactedError(ClientError):
    """The requested revision was compacted; ``compact_revision`` is the oldest one left.

    For a watch: re-list and watch again from the list's revision + 1."""

    def __init__(self, compact_revision: int = 0, details: str = etcd_errors.ErrCompacted.message,
                 endpoint: str = "") -> None:
        super().__init__(grpc.StatusCode.OUT_OF_RANGE, details, endpoint)
        self.compact_revision = compact_revision


class NoLeaderError(ClientError):
    """The cluster has no leader (or an election has no leader: see ``recipes.Election``)."""

    def __init__(self, details: str = etcd_errors.ErrNoLeader.message, endpoint: str = "") -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, details, endpoint)


class NotSupportedForLearnerError(ClientError):
    """The member is a learner and refuses this request; use a voting member."""


class LeaseNotFoundError(ClientError):
    """The lease does not exist (expired or revoked)."""


class LeaseLostError(ClientError):
    """A lease kept alive by this client expired or was revoked."""

    def __init__(self, lease_id: int, details: str = "lease expired or revoked") -> None:
        super().__init__(grpc.StatusCode.NOT_FOUND, f"{details}: lease {lease_id:x}")
        self.lease_id = lease_id


class ClientClosedError(ClientError):
    """The Client was closed; its watches, keep-alives and calls end with this."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.CANCELLED, "client closed")


class LockTimeoutError(ClientError):
    """A Mutex.lock(timeout=...) or Election.campaign(timeout=...) gave up waiting."""

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, details)


class ElectionNotLeaderError(ClientError):
    """Proclaim/resign by a candidate that is not (or no longer) the leader."""

    def __init__(self, details: str = "election: not leader") -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, details)


def from_rpc_error(e: grpc.RpcError, endpoint: str = "") -> ClientError:
    """Map a grpc error to the most specific ClientError."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else str(e)) or ""
    if details == etcd_errors.ErrCompacted.message:
        return CompactedError(0, details, endpoint)
    if details == etcd_errors.ErrNoLeader.message:
        return NoLeaderError(details, endpoint)
    if details == etcd_errors.ErrNotSupportedForLearner.message:
        return NotSupportedForLearnerError(code, details, endpoint)
    if details == etcd_errors.ErrLeaseNotFound.message:
        return LeaseNotFoundError(code, details, endpoint)
    return ClientError(code, details, endpoint)
