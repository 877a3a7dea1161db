"""Revisions and their on-disk encoding.

A revision is (main, sub): ``main`` is the store revision a write transaction created,
``sub`` orders the changes inside that transaction. On disk a revision is 8 bytes of
main (big-endian), ``_``, 8 bytes of sub; tombstones append ``t``. Big-endian makes byte
order equal revision order, so scanning the ``key`` column family in order replays
history, which is how watchers catch up.
"""

from __future__ import annotations

import struct

Revision = tuple[int, int]  # (main, sub); tuples compare the way revisions do

_PACK = struct.Struct(">Q").pack
_UNPACK = struct.Struct(">Q").unpack_from
_PACK_REV = struct.Struct(">Q1sQ").pack
REV_BYTES_LEN = 17
TOMBSTONE_MARK = b"t"


def rev_to_bytes(main: int, sub: int = 0, tombstone: bool = False) -> bytes:
    b = _PACK_REV(main, b"_", sub)
    return b + TOMBSTONE_MARK if tombstone else b


def bytes_to_rev(b: bytes) -> Revision:
    return (_UNPACK(b, 0)[0], _UNPACK(b, 9)[0])


def is_tombstone(b: bytes) -> bool:
    return len(b) == REV_BYTES_LEN + 1 and b[-1:] == TOMBSTONE_MARK


def main_rev_prefix(main: int) -> bytes:
    """The smallest encoded revision with this main revision (a scan start)."""
    return _PACK(main)
