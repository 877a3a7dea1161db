"""Stateless request checks of etcd 3.5's KV gRPC layer (``server/etcdserver/api/v3rpc/key.go``).

These run in the gRPC handler before anything is proposed or read, and raise the
``datastore.errors`` classes etcd would return. Order matters because clients see only the
first error: ``check_txn_request`` mirrors ``kvServer.Txn`` exactly (``checkTxnRequest``,
then ``checkIntervals(success)``, then ``checkIntervals(failure)``).

What etcd 3.5 deliberately does NOT check here, and where it does instead:

* ``sort_order`` / ``sort_target``: never validated in 3.5 (``ErrInvalidSortOption`` is
  main-branch only). In the applier's Range an unknown ``sort_order`` means "no sort";
  ``sort_target != KEY`` with ``sort_order == NONE`` sorts ASCEND; an unknown
  ``sort_target`` leaves Go's sorter nil and panics the server. Any non-NONE order, and any
  min/max mod/create revision filter, makes the store fetch without limit, then filter,
  sort and truncate to ``limit`` (``more`` set if truncated).
* Revisions (mvcc, ``kvstore_txn.go`` / ``kvstore.go``): a Range ``revision`` > current
  raises ``ErrFutureRev``; ``0 < revision < compacted`` raises ``ErrCompacted``;
  ``revision <= 0`` means "current". Inside a txn the applier's ``checkRequests`` checks
  the ranges of the branch that will run (nested txns along the compare path) *before*
  executing anything: ``rev > current`` -> ``ErrFutureRev``, ``rev < first`` -> ``ErrCompacted``.
* Leases and ignore_* (applier): a Put with ``lease != 0`` naming no live lease raises
  ``ErrLeaseNotFound``; ``ignore_value``/``ignore_lease`` on a missing key raise
  ``ErrKeyNotFound``. For a txn these run over the chosen branch before it executes, so a
  failing op aborts the whole txn with no writes.
* Compact (mvcc ``updateCompactRev``): ``rev <= last compacted`` -> ``ErrCompacted``
  (also for the same revision twice); ``rev > current`` -> ``ErrFutureRev``. Both are
  decided at apply time, after the proposal is committed.
* Size: the gRPC server's MaxRecvMsgSize is ``--max-request-bytes`` (default 1.5 MiB) +
  512 KiB; bigger messages are refused by gRPC itself (RESOURCE_EXHAUSTED). Requests that
  go through raft (writes, compaction, leases, auth, ...) are then marshalled as an
  InternalRaftRequest (with its header) and refused with ``ErrRequestTooLarge`` if that is
  larger than ``--max-request-bytes`` (etcdserver ``processInternalRaftRequestOnce``).
  Reads (Range, read-only Txn) are not proposed, so only the gRPC limit applies to them.
* Quota (``quotaKVServer``): Put/Txn-with-writes when the backend is over quota, or while
  the NOSPACE alarm is active, get ``ErrNoSpace``.
* Auth, learner (``ErrNotSupportedForLearner``) and leader checks live in interceptors.
"""

from __future__ import annotations

from collections.abc import Iterable

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2

__all__ = [
    "DEFAULT_MAX_TXN_OPS",
    "check_delete_request",
    "check_intervals",
    "check_put_request",
    "check_range_request",
    "check_request_op",
    "check_txn_request",
]

# embed.DefaultMaxTxnOps (--max-txn-ops).
DEFAULT_MAX_TXN_OPS = 128


def check_range_request(r: rpc_pb2.RangeRequest) -> None:
    if not r.key:
        raise errors.ErrEmptyKey()


def check_put_request(r: rpc_pb2.PutRequest) -> None:
    if not r.key:
        raise errors.ErrEmptyKey()
    if r.ignore_value and r.value:
        raise errors.ErrValueProvided()
    if r.ignore_lease and r.lease != 0:
        raise errors.ErrLeaseProvided()


def check_delete_request(r: rpc_pb2.DeleteRangeRequest) -> None:
    if not r.key:
        raise errors.ErrEmptyKey()


def check_request_op(op: rpc_pb2.RequestOp, max_txn_ops: int) -> None:
    """etcd's checkRequestOp: validate one txn op; an op with nothing set is ErrKeyNotFound."""
    kind = op.WhichOneof("request")
    if kind == "request_range":
        check_range_request(op.request_range)
    elif kind == "request_put":
        check_put_request(op.request_put)
    elif kind == "request_delete_range":
        check_delete_request(op.request_delete_range)
    elif kind == "request_txn":
        _check_txn(op.request_txn, max_txn_ops)
    else:
        raise errors.ErrKeyNotFound()


def _check_txn(r: rpc_pb2.TxnRequest, max_txn_ops: int) -> None:
    # etcd's checkTxnRequest. The limit is per list, not the sum: the longest of
    # compare/success/failure counts, and nested txns only get what is left over.
    opc = max(len(r.compare), len(r.success), len(r.failure))
    if opc > max_txn_ops:
        raise errors.ErrTooManyOps()
    for c in r.compare:
        if not c.key:
            raise errors.ErrEmptyKey()
    for op in r.success:
        check_request_op(op, max_txn_ops - opc)
    for op in r.failure:
        check_request_op(op, max_txn_ops - opc)


def check_txn_request(r: rpc_pb2.TxnRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """Everything ``kvServer.Txn`` checks before handing the txn to the server."""
    _check_txn(r, max_txn_ops)
    # Overlap checks run only after the op-count check, to bound their cost.
    check_intervals(r.success)
    check_intervals(r.failure)


class _Deletes:
    """The deletes of one txn level, as etcd's adt.IntervalTree of StringAffine intervals.

    An interval [begin, end) uses "affine" bounds: an empty end is +infinity, anything
    else compares bytewise. etcd builds the interval straight from ``range_end`` without
    the ``"\\x00"`` means "to the end" translation the applier does, so a delete with
    ``range_end == b"\\x00"`` is the empty interval [key, "\\x00") and conflicts with no put.
    Point deletes (no range_end) are kept in a set: [k, k+"\\x00") contains exactly k.
    """

    __slots__ = ("points", "ranges")

    def __init__(self) -> None:
        self.points: set[bytes] = set()
        self.ranges: list[tuple[bytes, bytes]] = []

    def add(self, key: bytes, range_end: bytes) -> None:
        if range_end:
            self.ranges.append((key, range_end))
        else:
            self.points.add(key)

    def union(self, other: _Deletes) -> None:
        self.points |= other.points
        self.ranges.extend(other.ranges)

    def contains(self, key: bytes) -> bool:
        # An empty key is +infinity as an affine bound and overlaps nothing; requests
        # that reach here have non-empty keys anyway (checked by _check_txn first).
        if not key:
            return False
        if key in self.points:
            return True
        return any(begin and begin <= key and (not end or key < end) for begin, end in self.ranges)


def _intervals(ops: Iterable[rpc_pb2.RequestOp]) -> tuple[set[bytes], _Deletes]:
    ops = list(ops)
    # This level's deletes first, so puts in nested txns are checked against them.
    dels = _Deletes()
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            dels.add(op.request_delete_range.key, op.request_delete_range.range_end)

    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _intervals(op.request_txn.success)
        puts_else, dels_else = _intervals(op.request_txn.failure)
        for k in puts_then:
            if k in puts or dels.contains(k):
                raise errors.ErrDuplicateKey()
            puts.add(k)
        for k in puts_else:
            # then/else are mutually exclusive, so the same key in both branches is fine.
            if (k in puts and k not in puts_then) or dels.contains(k):
                raise errors.ErrDuplicateKey()
            puts.add(k)
        # Merged only now: a nested txn's deletes are checked against puts of *later*
        # sibling txns and of this level, not earlier siblings (etcd's exact order).
        dels.union(dels_then)
        dels.union(dels_else)

    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or dels.contains(k):
            raise errors.ErrDuplicateKey()
        puts.add(k)
    return puts, dels


def check_intervals(ops: Iterable[rpc_pb2.RequestOp]) -> None:
    """etcd's checkIntervals: no key may be put twice, or put and deleted, in one txn branch.

    Ranges are never checked; deletes may overlap each other; a put in the success branch
    of a nested txn may repeat one in its failure branch.
    """
    _intervals(ops)
