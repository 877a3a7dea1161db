"""Spot checks of the etcd error table against etcd 3.5's rpctypes."""

import subprocess
import sys
from pathlib import Path

import pytest

from datastore import errors


@pytest.mark.parametrize(
    ("cls", "code", "message"),
    [
        (errors.ErrEmptyKey, "INVALID_ARGUMENT", "etcdserver: key is not provided"),
        (errors.ErrKeyNotFound, "INVALID_ARGUMENT", "etcdserver: key not found"),
        (errors.ErrDuplicateKey, "INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request"),
        (errors.ErrTooManyOps, "INVALID_ARGUMENT", "etcdserver: too many operations in txn request"),
        (errors.ErrCompacted, "OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted"),
        (errors.ErrFutureRev, "OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision"),
        (errors.ErrNoSpace, "RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded"),
        (errors.ErrLeaseNotFound, "NOT_FOUND", "etcdserver: requested lease not found"),
        (errors.ErrLeaseExist, "FAILED_PRECONDITION", "etcdserver: lease already exists"),
        (errors.ErrLeaseTTLTooLarge, "OUT_OF_RANGE", "etcdserver: too large lease TTL"),
        (errors.ErrRequestTooLarge, "INVALID_ARGUMENT", "etcdserver: request is too large"),
        (errors.ErrTooManyRequests, "RESOURCE_EXHAUSTED", "etcdserver: too many requests"),
        (errors.ErrPermissionDenied, "PERMISSION_DENIED", "etcdserver: permission denied"),
        (errors.ErrInvalidAuthToken, "UNAUTHENTICATED", "etcdserver: invalid auth token"),
        (errors.ErrUserNotFound, "FAILED_PRECONDITION", "etcdserver: user name not found"),
        (errors.ErrNoLeader, "UNAVAILABLE", "etcdserver: no leader"),
        (errors.ErrNotLeader, "FAILED_PRECONDITION", "etcdserver: not leader"),
        # etcd 3.6's codes for these three (3.5 said UNAVAILABLE).
        (errors.ErrNotCapable, "FAILED_PRECONDITION", "etcdserver: not capable"),
        (errors.ErrNotSupportedForLearner, "FAILED_PRECONDITION",
         "etcdserver: rpc not supported for learner"),
        (
            errors.ErrClusterVersionUnavailable,
            "FAILED_PRECONDITION",
            "etcdserver: cluster version not found during downgrade",
        ),
        (errors.ErrCorrupt, "DATA_LOSS", "etcdserver: corrupt cluster"),
        (errors.ErrWatchCanceled, "CANCELLED", "etcdserver: watch canceled"),
        (errors.ErrMemberNotFound, "NOT_FOUND", "etcdserver: member not found"),
        (errors.ErrPeerURLExist, "FAILED_PRECONDITION", "etcdserver: Peer URLs already exists"),
    ],
)
def test_code_and_message(cls: type[errors.EtcdError], code: str, message: str) -> None:
    assert cls.code == code
    assert cls.message == message
    err = cls()
    assert isinstance(err, errors.EtcdError)
    assert str(err) == message
    assert errors.by_message(message) is cls


def test_by_message_unknown() -> None:
    assert errors.by_message("etcdserver: no such thing") is None
    assert errors.by_message("") is None


def test_messages_unique_and_codes_are_grpc_names() -> None:
    # The StatusCode names of grpcio, listed here so this module stays grpc-free.
    grpc_names = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    }  # fmt: skip
    messages = [c.message for c in errors.ALL_ERRORS]
    assert len(messages) == len(set(messages))
    # grpc-go's own text for a bare context error, which etcd 3.5 passes through
    bare_context = {errors.ErrContextDeadlineExceeded}
    for c in errors.ALL_ERRORS:
        assert c.code in grpc_names, c
        assert c.message.startswith("etcdserver: ") or c in bare_context, c
        assert errors.by_message(c.message) is c


def test_codes_match_grpc_statuscode() -> None:
    import grpc
    for c in errors.ALL_ERRORS:
        assert isinstance(getattr(grpc.StatusCode, c.code), grpc.StatusCode)


def test_aliases_and_adhoc_message() -> None:
    assert errors.ErrMemberLearnerNotReady is errors.ErrLearnerNotReady
    assert errors.ErrGPRCNotSupportedForLearner is errors.ErrNotSupportedForLearner
    e = errors.EtcdError("auth: something unmapped")
    assert e.code == "UNKNOWN"
    assert str(e) == "auth: something unmapped"
    with pytest.raises(errors.ErrCompacted):
        raise errors.ErrCompacted()


def test_module_does_not_import_grpc() -> None:
    code = "import sys, datastore.errors, datastore.validation; print('grpc' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"
