"""Key-range permissions of one user, merged over its roles (etcd's range_perm_cache.go).

A permission is a key interval ``[key, range_end)``: an empty ``range_end`` means the
single key (the interval ``[key, key + b"\\0")``), and ``b"\\0"`` means every key from
``key`` on. A request on a single key needs one permission interval containing it; a
request on a range needs the permission intervals to cover the whole range without a gap
(etcd's ``IntervalTree.Contains``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

from datastore.api.authpb import auth_pb2 as authpb

# End of an open interval: compares greater than every key. Keys are bytes, so a
# non-bytes sentinel with explicit comparisons keeps the hot path simple.
INF: None = None

Interval = tuple[bytes, bytes | None]  # (begin, end); end None = +infinity


def _end_lt(a: bytes | None, b: bytes | None) -> bool:
    """a < b for interval ends, None being +infinity."""
    if a is None:
        return False
    return b is None or a < b


def perm_interval(key: bytes, range_end: bytes) -> Interval:
    if not range_end:
        return key, key + b"\x00"
    if range_end == b"\x00":
        return key, INF
    return key, range_end


class RangePerms:
    """Read and write intervals of one user, each list merged, sorted and disjoint."""

    __slots__ = ("raw_read", "raw_write", "read", "read_begins", "write", "write_begins")

    def __init__(self, perms: Iterable[authpb.Permission]) -> None:
        read: list[Interval] = []
        write: list[Interval] = []
        for p in perms:
            ivl = perm_interval(p.key, p.range_end)
            if p.permType in (authpb.Permission.READ, authpb.Permission.READWRITE):
                read.append(ivl)
            if p.permType in (authpb.Permission.WRITE, authpb.Permission.READWRITE):
                write.append(ivl)
        self.raw_read = read
        self.raw_write = write
        self.read = _merge(read)
        self.write = _merge(write)
        self.read_begins = [b for b, _ in self.read]
        self.write_begins = [b for b, _ in self.write]

    def allows(self, key: bytes, range_end: bytes, write: bool) -> bool:
        ivls, begins = (self.write, self.write_begins) if write else (self.read, self.read_begins)
        # The merged intervals are disjoint and separated by gaps, so the only candidate is
        # the last one starting at or before ``key``: it must contain the key (or the range).
        i = bisect_right(begins, key) - 1
        if i < 0:
            return False
        e = ivls[i][1]
        if not range_end:  # one key
            return e is None or key < e
        end: bytes | None = INF if range_end == b"\x00" else range_end
        if end is not None and key >= end:
            # A backwards or empty range (it reads nothing): etcd's tree answers from the
            # permissions it overlaps, unmerged; keep its answer exactly.
            return _tree_contains(self.raw_write if write else self.raw_read, key, end)
        return not _end_lt(e, end)


def _tree_contains(raw: list[Interval], key: bytes, end: bytes) -> bool:
    """etcd's IntervalTree.Contains over the permissions as granted."""
    hits = sorted((iv for iv in raw if (iv[1] is None or iv[0] < iv[1]) and iv[0] < end
                   and _end_lt(key, iv[1])), key=lambda iv: iv[0])
    if not hits:
        return False
    min_begin, max_end = hits[0]
    for b, e in hits[1:]:
        if _end_lt(max_end, b):
            return False
        if _end_lt(max_end, e):
            max_end = e
    return min_begin <= key and not _end_lt(max_end, end)


def _merge(ivls: list[Interval]) -> list[Interval]:
    """Union of intervals as disjoint, sorted intervals (touching ones joined)."""
    out: list[Interval] = []
    for b, e in sorted(ivls, key=lambda x: x[0]):
        if out and not _end_lt(out[-1][1], b):  # overlaps or touches the previous one
            pb, pe = out[-1]
            out[-1] = (pb, e if _end_lt(pe, e) else pe)
            continue
        out.append((b, e))
    return out
