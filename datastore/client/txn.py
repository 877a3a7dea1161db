"""Small builders for etcd transactions.

    from datastore.client.txn import Compare, op_put, op_get
    await c.txn(compare=[Compare.mod_revision("k") == 0],
                success=[op_put("k", "v")], failure=[op_get("k")])

``Compare.<target>(key)`` returns a target; comparing it with ``==``, ``!=``, ``<`` or
``>`` yields the ``etcdserverpb.Compare`` message the server evaluates.
"""

from __future__ import annotations

from collections.abc import Iterable

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.client.requests import (
    KeyLike,
    delete_request,
    key_range,
    put_request,
    range_request,
    to_bytes,
)

__all__ = ["Compare", "op_delete", "op_get", "op_put", "op_txn"]


class _Target:
    """One side of a comparison: a key (or range) and what of it is compared."""

    __slots__ = ("_end", "_field", "_key", "_target")
    __hash__ = None  # type: ignore[assignment]  # == builds a message, so no hashing

    def __init__(self, key: KeyLike, target: int, field: str, range_end: KeyLike | None,
                 prefix: bool) -> None:
        self._key, self._end = key_range(key, prefix, range_end)
        self._target, self._field = target, field

    def _cmp(self, result: int, other: int | KeyLike) -> rpc.Compare:
        c = rpc.Compare(result=result, target=self._target, key=self._key,  # type: ignore[arg-type]
                        range_end=self._end)
        if self._field == "value":
            c.value = to_bytes(other)  # type: ignore[arg-type]
        else:
            setattr(c, self._field, int(other))
        return c

    def __eq__(self, other: object) -> rpc.Compare:
        return self._cmp(rpc.Compare.EQUAL, other)  # type: ignore[arg-type]

    def __ne__(self, other: object) -> rpc.Compare:
        return self._cmp(rpc.Compare.NOT_EQUAL, other)  # type: ignore[arg-type]

    def __lt__(self, other: int | KeyLike) -> rpc.Compare:
        return self._cmp(rpc.Compare.LESS, other)

    def __gt__(self, other: int | KeyLike) -> rpc.Compare:
        return self._cmp(rpc.Compare.GREATER, other)


class Compare:
    """Factories for comparison targets (etcd's clientv3.Compare(Value(k), "=", v) etc.)."""

    @staticmethod
    def value(key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False) -> _Target:
        return _Target(key, rpc.Compare.VALUE, "value", range_end, prefix)

    @staticmethod
    def version(key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False) -> _Target:
        return _Target(key, rpc.Compare.VERSION, "version", range_end, prefix)

    @staticmethod
    def create_revision(key: KeyLike, *, range_end: KeyLike | None = None,
                        prefix: bool = False) -> _Target:
        return _Target(key, rpc.Compare.CREATE, "create_revision", range_end, prefix)

    @staticmethod
    def mod_revision(key: KeyLike, *, range_end: KeyLike | None = None,
                     prefix: bool = False) -> _Target:
        return _Target(key, rpc.Compare.MOD, "mod_revision", range_end, prefix)

    @staticmethod
    def lease(key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False) -> _Target:
        return _Target(key, rpc.Compare.LEASE, "lease", range_end, prefix)


def op_get(key: KeyLike, **kwargs: object) -> rpc.RequestOp:
    """A Range inside a txn; takes the same keyword arguments as ``Client.get``."""
    return rpc.RequestOp(request_range=range_request(key, **kwargs))  # type: ignore[arg-type]


def op_put(key: KeyLike, value: KeyLike, lease: int = 0, prev_kv: bool = False) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=put_request(key, value, lease=lease, prev_kv=prev_kv))


def op_delete(key: KeyLike, prefix: bool = False, range_end: KeyLike | None = None,
              prev_kv: bool = False) -> rpc.RequestOp:
    return rpc.RequestOp(request_delete_range=delete_request(
        key, prefix=prefix, range_end=range_end, prev_kv=prev_kv))


def op_txn(compare: Iterable[rpc.Compare] = (), success: Iterable[rpc.RequestOp] = (),
           failure: Iterable[rpc.RequestOp] = ()) -> rpc.RequestOp:
    """A nested txn (etcd >= 3.3)."""
    return rpc.RequestOp(request_txn=txn_request(compare, success, failure))


def txn_request(compare: Iterable[rpc.Compare], success: Iterable[rpc.RequestOp],
                failure: Iterable[rpc.RequestOp]) -> rpc.TxnRequest:
    return rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))


def is_read_only(req: rpc.TxnRequest) -> bool:
    """True when no branch writes (so the txn is as safe to retry as a Range)."""
    for op in (*req.success, *req.failure):
        kind = op.WhichOneof("request")
        if kind == "request_txn":
            if not is_read_only(op.request_txn):
                return False
        elif kind != "request_range":
            return False
    return True
