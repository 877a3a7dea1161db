"""Request builders shared by the Client methods and the txn ``op_*`` helpers."""

from __future__ import annotations

from datastore.api.etcdserverpb import rpc_pb2 as rpc

KeyLike = str | bytes

_SORT_ORDER = {None: rpc.RangeRequest.NONE, "none": rpc.RangeRequest.NONE,
               "ascend": rpc.RangeRequest.ASCEND, "descend": rpc.RangeRequest.DESCEND}
_SORT_TARGET = {None: rpc.RangeRequest.KEY, "key": rpc.RangeRequest.KEY,
                "version": rpc.RangeRequest.VERSION, "create": rpc.RangeRequest.CREATE,
                "mod": rpc.RangeRequest.MOD, "value": rpc.RangeRequest.VALUE}


def to_bytes(v: KeyLike) -> bytes:
    """Keys and values are str (encoded as UTF-8) or bytes."""
    return v.encode() if isinstance(v, str) else bytes(v)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # all 0xff (or empty): to the end of the keyspace


def key_range(key: KeyLike, prefix: bool, range_end: KeyLike | None) -> tuple[bytes, bytes]:
    """(key, range_end) for a single key, a prefix, or an explicit range."""
    k = to_bytes(key)
    if prefix:
        if not k:  # clientv3: an empty prefix means every key
            return b"\x00", b"\x00"
        return k, prefix_end(k)
    return k, to_bytes(range_end) if range_end is not None else b""


def _enum(table: dict[object, int], v: object, what: str) -> int:
    if isinstance(v, int):
        return v
    key = v.lower() if isinstance(v, str) else v
    if key not in table:
        raise ValueError(f"unknown {what} {v!r}; use one of {[k for k in table if k]}")
    return table[key]


def range_request(key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None,
                  revision: int = 0, limit: int = 0, serializable: bool = False,
                  keys_only: bool = False, count_only: bool = False,
                  sort_order: str | int | None = None,
                  sort_target: str | int | None = None, min_mod_revision: int = 0,
                  max_mod_revision: int = 0, min_create_revision: int = 0,
                  max_create_revision: int = 0) -> rpc.RangeRequest:
    k, end = key_range(key, prefix, range_end)
    return rpc.RangeRequest(
        key=k, range_end=end, revision=revision, limit=limit, serializable=serializable,
        keys_only=keys_only, count_only=count_only, min_mod_revision=min_mod_revision,
        max_mod_revision=max_mod_revision, min_create_revision=min_create_revision,
        max_create_revision=max_create_revision,
        sort_order=_enum(_SORT_ORDER, sort_order, "sort_order"),  # type: ignore[arg-type]
        sort_target=_enum(_SORT_TARGET, sort_target, "sort_target"))  # type: ignore[arg-type]


def put_request(key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False,
                ignore_value: bool = False, ignore_lease: bool = False) -> rpc.PutRequest:
    return rpc.PutRequest(key=to_bytes(key), value=to_bytes(value), lease=lease, prev_kv=prev_kv,
                          ignore_value=ignore_value, ignore_lease=ignore_lease)


def delete_request(key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None,
                   prev_kv: bool = False) -> rpc.DeleteRangeRequest:
    k, end = key_range(key, prefix, range_end)
    return rpc.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv)
