"""Table-driven checks of datastore.validation against etcd 3.5's v3rpc/key.go behaviour."""

from __future__ import annotations

import pytest

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.validation import (
    check_delete_request,
    check_intervals,
    check_put_request,
    check_range_request,
    check_txn_request,
)


# --- small builders --------------------------------------------------------------------------
def put(key: bytes, **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, **kw))


def rng(key: bytes, end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, range_end=end))


def dele(key: bytes, end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, range_end=end))


def txn(success=(), failure=(), compare=()) -> pb.TxnRequest:
    return pb.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))


def sub(success=(), failure=(), compare=()) -> pb.RequestOp:
    return pb.RequestOp(request_txn=txn(success, failure, compare))


def cmp(key: bytes) -> pb.Compare:
    return pb.Compare(key=key, target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)


# --- single requests ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fn", "req", "err"),
    [
        (check_range_request, pb.RangeRequest(key=b"a"), None),
        (check_range_request, pb.RangeRequest(), errors.ErrEmptyKey),
        (check_range_request, pb.RangeRequest(range_end=b"\x00"), errors.ErrEmptyKey),
        # Sort options are not validated by etcd 3.5.
        (check_range_request, pb.RangeRequest(key=b"a", sort_order=7, sort_target=9), None),
        (check_put_request, pb.PutRequest(key=b"a", value=b"v", lease=5), None),
        (check_put_request, pb.PutRequest(value=b"v"), errors.ErrEmptyKey),
        (check_put_request, pb.PutRequest(key=b"a", ignore_value=True), None),
        (check_put_request, pb.PutRequest(key=b"a", ignore_value=True, value=b"v"), errors.ErrValueProvided),
        (check_put_request, pb.PutRequest(key=b"a", ignore_lease=True), None),
        (check_put_request, pb.PutRequest(key=b"a", ignore_lease=True, lease=1), errors.ErrLeaseProvided),
        # Empty key wins over the ignore_* checks.
        (check_put_request, pb.PutRequest(ignore_value=True, value=b"v"), errors.ErrEmptyKey),
        (check_put_request,
         pb.PutRequest(key=b"a", ignore_value=True, value=b"v", ignore_lease=True, lease=1),
         errors.ErrValueProvided),
        (check_delete_request, pb.DeleteRangeRequest(key=b"a", range_end=b"b"), None),
        (check_delete_request, pb.DeleteRangeRequest(range_end=b"b"), errors.ErrEmptyKey),
    ],
)  # fmt: skip
def test_single_requests(fn, req, err) -> None:
    if err is None:
        fn(req)
    else:
        with pytest.raises(err):
            fn(req)


# --- txn structure and op counts ------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "req", "max_ops", "err"),
    [
        ("empty txn", txn(), 128, None),
        ("at the limit", txn(success=[put(b"k%d" % i) for i in range(4)]), 4, None),
        ("over in success", txn(success=[put(b"k%d" % i) for i in range(5)]), 4, errors.ErrTooManyOps),
        ("over in failure", txn(failure=[put(b"k%d" % i) for i in range(5)]), 4, errors.ErrTooManyOps),
        ("over in compare", txn(compare=[cmp(b"c%d" % i) for i in range(5)]), 4, errors.ErrTooManyOps),
        # The limit applies per list (max of the three), not to their sum.
        ("per list, not sum",
         txn(compare=[cmp(b"c%d" % i) for i in range(4)], success=[put(b"s%d" % i) for i in range(4)],
             failure=[put(b"f%d" % i) for i in range(4)]), 4, None),
        # Nested txns get max_ops - opc of their parent: here 4 - 2 = 2.
        ("nested within budget", txn(success=[sub(success=[put(b"a"), put(b"b")]), rng(b"x")]), 4, None),
        ("nested over budget",
         txn(success=[sub(success=[put(b"a"), put(b"b"), put(b"c")]), rng(b"x")]), 4, errors.ErrTooManyOps),
        ("budget shrinks per level",
         txn(success=[sub(success=[sub(success=[put(b"a")])])]), 2, errors.ErrTooManyOps),
        ("deep nesting fits", txn(success=[sub(success=[sub(success=[put(b"a")])])]), 3, None),
        ("empty compare key", txn(compare=[cmp(b"")]), 128, errors.ErrEmptyKey),
        ("empty op is key-not-found", txn(success=[pb.RequestOp()]), 128, errors.ErrKeyNotFound),
        ("empty op in failure", txn(failure=[put(b"a"), pb.RequestOp()]), 128, errors.ErrKeyNotFound),
        ("empty op nested", txn(success=[sub(failure=[pb.RequestOp()])]), 128, errors.ErrKeyNotFound),
        ("empty key in put op", txn(success=[put(b"")]), 128, errors.ErrEmptyKey),
        ("empty key in range op", txn(failure=[rng(b"")]), 128, errors.ErrEmptyKey),
        ("empty key in nested delete", txn(success=[sub(success=[dele(b"")])]), 128, errors.ErrEmptyKey),
        ("value with ignore_value in txn", txn(success=[put(b"a", value=b"v", ignore_value=True)]), 128,
         errors.ErrValueProvided),
        # Op-count and field checks run before the duplicate-key check.
        ("too many beats duplicate", txn(success=[put(b"a"), put(b"a"), put(b"b")]), 2, errors.ErrTooManyOps),
        ("empty key beats duplicate", txn(success=[put(b"a"), put(b"a")], failure=[put(b"")]), 128,
         errors.ErrEmptyKey),
        ("compare key beats ops", txn(compare=[cmp(b"")], success=[pb.RequestOp()]), 128, errors.ErrEmptyKey),
    ],
)  # fmt: skip
def test_txn_structure(name, req, max_ops, err) -> None:
    if err is None:
        check_txn_request(req, max_ops)
    else:
        with pytest.raises(err):
            check_txn_request(req, max_ops)


# --- duplicate keys / put-delete overlap ----------------------------------------------------
DUP = errors.ErrDuplicateKey


@pytest.mark.parametrize(
    ("name", "ops", "err"),
    [
        ("distinct puts", [put(b"a"), put(b"b")], None),
        ("same put twice", [put(b"a"), put(b"b"), put(b"a")], DUP),
        ("put and point delete", [put(b"a"), dele(b"a")], DUP),
        ("point delete then put", [dele(b"a"), put(b"a")], DUP),
        ("delete neighbour", [dele(b"a"), put(b"ab"), put(b"b")], None),
        ("range delete covers put", [dele(b"a", b"c"), put(b"b")], DUP),
        ("range delete start is inclusive", [dele(b"a", b"c"), put(b"a")], DUP),
        ("range delete end is exclusive", [dele(b"a", b"c"), put(b"c")], None),
        ("prefix delete", [dele(b"foo/", b"foo0"), put(b"foo/bar")], DUP),
        # etcd builds the interval from range_end as given: "\x00" is not "to the end" here.
        ("delete from-key (\\x00) does not conflict", [dele(b"a", b"\x00"), put(b"z")], None),
        ("inverted range conflicts with nothing", [dele(b"c", b"a"), put(b"b")], None),
        ("deletes may overlap", [dele(b"a", b"z"), dele(b"b"), dele(b"a", b"c")], None),
        ("ranges never conflict", [rng(b"a", b"z"), put(b"b"), rng(b"b"), dele(b"c")], None),
        # Nested txns.
        ("nested put vs outer put", [sub(success=[put(b"a")]), put(b"a")], DUP),
        ("nested else put vs outer put", [put(b"a"), sub(failure=[put(b"a")])], DUP),
        ("nested then and else may repeat a key", [sub(success=[put(b"a")], failure=[put(b"a")])], None),
        ("two nested txns put same key", [sub(success=[put(b"a")]), sub(success=[put(b"a")])], DUP),
        ("two nested: then vs later else", [sub(success=[put(b"a")]), sub(failure=[put(b"a")])], DUP),
        ("nested dup inside one branch", [sub(success=[put(b"a"), put(b"a")])], DUP),
        ("outer delete vs nested put", [dele(b"a", b"b"), sub(failure=[put(b"a")])], DUP),
        ("nested delete vs outer put", [sub(success=[dele(b"a")]), put(b"a")], DUP),
        ("nested range delete vs outer put", [put(b"m"), sub(failure=[dele(b"a", b"z")])], DUP),
        ("nested delete vs later sibling's put", [sub(success=[dele(b"a")]), sub(success=[put(b"a")])], DUP),
        # etcd merges a nested txn's deletes only after checking its puts, so an earlier
        # sibling's put is not checked against a later sibling's delete.
        ("earlier sibling put, later sibling delete", [sub(success=[put(b"a")]), sub(success=[dele(b"a")])],
         None),
        ("same nested txn: then delete, else put", [sub(success=[dele(b"a")], failure=[put(b"a")])], None),
        ("doubly nested vs outer", [sub(success=[sub(failure=[put(b"x")])]), put(b"x")], DUP),
        ("doubly nested delete vs outer put",
         [put(b"x"), sub(success=[sub(success=[dele(b"w", b"y")])])], DUP),
    ],
)  # fmt: skip
def test_intervals(name, ops, err) -> None:
    for branch in ("success", "failure"):
        req = txn(**{branch: ops})
        if err is None:
            check_intervals(ops)
            check_txn_request(req, 128)
        else:
            with pytest.raises(err):
                check_intervals(ops)
            with pytest.raises(err):
                check_txn_request(req, 128)


def test_success_and_failure_branches_are_independent() -> None:
    check_txn_request(txn(success=[put(b"a")], failure=[put(b"a"), dele(b"b")]), 128)
    with pytest.raises(DUP):
        check_txn_request(txn(success=[put(b"a")], failure=[put(b"b"), dele(b"b")]), 128)


def test_binary_keys() -> None:
    check_txn_request(txn(success=[put(b"\xff\x00"), put(b"\xff"), dele(b"\x00\x01")]), 128)
    with pytest.raises(DUP):
        check_txn_request(txn(success=[dele(b"\xfe", b"\xff\x01"), put(b"\xff\x00")]), 128)


def test_default_max_txn_ops_is_128() -> None:
    check_txn_request(txn(success=[put(b"k%d" % i) for i in range(128)]))
    with pytest.raises(errors.ErrTooManyOps):
        check_txn_request(txn(success=[put(b"k%d" % i) for i in range(129)]))


def test_error_messages_are_etcds() -> None:
    with pytest.raises(errors.EtcdError) as ei:
        check_txn_request(txn(success=[put(b"a"), put(b"a")]), 128)
    assert str(ei.value) == "etcdserver: duplicate key given in txn request"
    assert ei.value.code == "INVALID_ARGUMENT"
