"""etcd's client-facing errors, as plain exceptions (no grpc import).

Every class mirrors one ``ErrGRPC*`` status of etcd 3.5's ``api/v3rpc/rpctypes/error.go``:
``code`` is the ``grpc.StatusCode`` *name* and ``message`` the exact status message
clients match on (clientv3 maps a status back to its error by message alone, see
``rpctypes.Error``), so both must be byte-for-byte etcd's. The gRPC layer turns an
``EtcdError`` into ``context.abort(getattr(grpc.StatusCode, e.code), e.message)``.

Codes are etcd 3.6's. 3.6 changed three of 3.5's: ``not capable``, ``rpc not supported for
learner`` and ``cluster version not found during downgrade`` are FAILED_PRECONDITION there,
UNAVAILABLE in 3.5 (retrying cannot help: the member stays a learner, the server lacks the
capability). Clients match these errors by message, so 3.5 clients still recognise them.

A few entries are not emitted by etcd 3.5.0 but are kept because clients know them
(noted on each): they were added in later 3.5.x patch releases or on the main branch.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["ALL_ERRORS", "EtcdError", "by_message"]


class EtcdError(Exception):
    """Base of every etcd error; subclasses fix ``code`` and ``message``."""

    code: ClassVar[str] = "UNKNOWN"
    message: str = ""

    def __init__(self, message: str | None = None) -> None:
        # An explicit message is only for ad-hoc UNKNOWN errors (etcd's togRPCError
        # passes unmapped errors through as codes.Unknown with err.Error()).
        if message is not None:
            self.message = message
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


# --- request validation (v3rpc/key.go) and mvcc ------------------------------------------
class ErrEmptyKey(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: key is not provided"


# Also what a txn op with no request set yields (checkRequestOp's default branch).
class ErrKeyNotFound(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: key not found"


class ErrValueProvided(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: value is provided"


class ErrLeaseProvided(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: lease is provided"


class ErrTooManyOps(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: too many operations in txn request"


class ErrDuplicateKey(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: duplicate key given in txn request"


# main branch only: etcd 3.5 never validates sort_order (unknown values mean "no sort").
class ErrInvalidSortOption(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid sort option"


class ErrCompacted(EtcdError):
    code = "OUT_OF_RANGE"
    message = "etcdserver: mvcc: required revision has been compacted"


class ErrFutureRev(EtcdError):
    code = "OUT_OF_RANGE"
    message = "etcdserver: mvcc: required revision is a future revision"


class ErrNoSpace(EtcdError):
    code = "RESOURCE_EXHAUSTED"
    message = "etcdserver: mvcc: database space exceeded"


# --- leases --------------------------------------------------------------------------------
class ErrLeaseNotFound(EtcdError):
    code = "NOT_FOUND"
    message = "etcdserver: requested lease not found"


class ErrLeaseExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: lease already exists"


class ErrLeaseTTLTooLarge(EtcdError):
    code = "OUT_OF_RANGE"
    message = "etcdserver: too large lease TTL"


# --- watch ---------------------------------------------------------------------------------
class ErrWatchCanceled(EtcdError):
    code = "CANCELLED"
    message = "etcdserver: watch canceled"


# --- membership ----------------------------------------------------------------------------
class ErrMemberExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: member ID already exist"


class ErrPeerURLExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: Peer URLs already exists"


class ErrMemberNotEnoughStarted(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: re-configuration failed due to not enough started members"


class ErrMemberBadURLs(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: given member URLs are invalid"


class ErrMemberNotFound(EtcdError):
    code = "NOT_FOUND"
    message = "etcdserver: member not found"


class ErrMemberNotLearner(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: can only promote a learner member"


class ErrLearnerNotReady(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: can only promote a learner member which is in sync with leader"


class ErrTooManyLearners(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: too many learner members in cluster"


# Not in etcd 3.5.0's table; added later (main branch, ErrGRPCClusterIdMismatch).
class ErrClusterIdMismatch(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: cluster ID mismatch"


# --- request admission ---------------------------------------------------------------------
class ErrRequestTooLarge(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: request is too large"


class ErrTooManyRequests(EtcdError):
    code = "RESOURCE_EXHAUSTED"
    message = "etcdserver: too many requests"


# --- auth ----------------------------------------------------------------------------------
class ErrRootUserNotExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: root user does not exist"


class ErrRootRoleNotExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: root user does not have root role"


class ErrUserAlreadyExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: user name already exists"


class ErrUserEmpty(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: user name is empty"


class ErrUserNotFound(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: user name not found"


class ErrRoleAlreadyExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: role name already exists"


class ErrRoleNotFound(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: role name not found"


class ErrRoleEmpty(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: role name is empty"


class ErrAuthFailed(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: authentication failed, invalid user ID or password"


# RoleGrantPermission with no perm.
class ErrPermissionNotGiven(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: permission not given"


class ErrPermissionDenied(EtcdError):
    code = "PERMISSION_DENIED"
    message = "etcdserver: permission denied"


class ErrRoleNotGranted(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: role is not granted to the user"


class ErrPermissionNotGranted(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: permission is not granted to the role"


class ErrAuthNotEnabled(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: authentication is not enabled"


class ErrInvalidAuthToken(EtcdError):
    code = "UNAUTHENTICATED"
    message = "etcdserver: invalid auth token"


class ErrInvalidAuthMgmt(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid auth management"


# Not in etcd 3.5.0's rpctypes table; later releases map the auth store's stale-revision
# error here, and clientv3 re-authenticates when it sees it.
class ErrAuthOldRevision(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: revision of auth store is old"


# --- server / raft state -------------------------------------------------------------------
class ErrNoLeader(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: no leader"


class ErrNotLeader(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: not leader"


class ErrLeaderChanged(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: leader changed"


class ErrNotCapable(EtcdError):
    code = "FAILED_PRECONDITION"  # 3.6 (3.5: UNAVAILABLE)
    message = "etcdserver: not capable"


class ErrStopped(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: server stopped"


class ErrTimeout(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: request timed out"


class ErrTimeoutDueToLeaderFail(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: request timed out, possibly due to previous leader failure"


class ErrTimeoutDueToConnectionLost(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: request timed out, possibly due to connection lost"


# Not in 3.5.0's table; added by a later release (linearizable read waiting on apply).
class ErrTimeoutWaitAppliedIndex(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: request timed out, waiting for the applied index took too long"


class ErrUnhealthy(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: unhealthy cluster"


class ErrCorrupt(EtcdError):
    code = "DATA_LOSS"
    message = "etcdserver: corrupt cluster"


# etcd spells the Go name ErrGPRCNotSupportedForLearner; only Status and serializable
# Range are allowed on a learner.
class ErrNotSupportedForLearner(EtcdError):
    code = "FAILED_PRECONDITION"  # 3.6 (3.5: UNAVAILABLE)
    message = "etcdserver: rpc not supported for learner"


class ErrBadLeaderTransferee(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: bad leader transferee"


class ErrTimeoutLeaderTransfer(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: request timed out, leader transfer took too long"


# --- downgrade -----------------------------------------------------------------------------
class ErrClusterVersionUnavailable(EtcdError):
    code = "FAILED_PRECONDITION"  # 3.6 (3.5: UNAVAILABLE)
    message = "etcdserver: cluster version not found during downgrade"


class ErrWrongDowngradeVersionFormat(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: wrong downgrade target version format"


class ErrInvalidDowngradeTargetVersion(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid downgrade target version"


class ErrDowngradeInProcess(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: cluster has a downgrade job in progress"


class ErrNoInflightDowngrade(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: no inflight downgrade job"


# --- context errors (util.go). etcd's togRPCError hands a bare context.Canceled /
# DeadlineExceeded to grpc-go instead ("context canceled" / "context deadline exceeded"),
# so these two are mostly seen from code that wraps them explicitly.
class ErrCanceled(EtcdError):
    code = "CANCELLED"
    message = "etcdserver: request canceled"


class ErrDeadlineExceeded(EtcdError):
    code = "DEADLINE_EXCEEDED"
    message = "etcdserver: context deadline exceeded"


class ErrContextDeadlineExceeded(EtcdError):
    """A proposal raft never accepted (no leader) when its request timeout expired: etcd
    3.5 returns the bare context error and grpc-go maps it (3.4 answered UNKNOWN)."""

    code = "DEADLINE_EXCEEDED"
    message = "context deadline exceeded"


# Aliases under clientv3's names, so either spelling works.
ErrMemberLearnerNotReady = ErrLearnerNotReady
ErrGPRCNotSupportedForLearner = ErrNotSupportedForLearner

# Every concrete error, in definition order (aliases above are not new classes).
ALL_ERRORS: tuple[type[EtcdError], ...] = tuple(EtcdError.__subclasses__())

# Messages are unique (tests check it), so this inverts the table exactly.
_BY_MESSAGE: dict[str, type[EtcdError]] = {c.message: c for c in ALL_ERRORS}


def by_message(msg: str) -> type[EtcdError] | None:
    """The error class whose etcd message is exactly ``msg`` (as clientv3's rpctypes.Error does)."""
    return _BY_MESSAGE.get(msg)


def wants_credentials(details: str) -> bool:
    """A refusal for want of a user (no token, or one the member does not accept): the
    member answered. With auth on, etcd 3.5.28+/3.6 and the datastore keep even Status
    to users, so a readiness probe or a peer view must read this as "up"."""
    return ErrUserEmpty.message in details or ErrInvalidAuthToken.message in details
