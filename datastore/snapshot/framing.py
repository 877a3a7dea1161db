"""A snapshot file: the database image followed by its SHA-256, as etcd writes it.

``etcdctl snapshot save`` stores what Maintenance.Snapshot streams: the bbolt file, then 32
bytes of SHA-256 over it. A database is a whole number of pages, so (as etcdutl decides)
a file whose size is 32 past a multiple of 512 carries the hash, and a db file copied out
of a data dir does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

SHA_LEN = 32
_TAR_MAGIC_AT = 257  # "ustar": the datastore's snapshots before they were etcd's format


class SnapshotHashError(ValueError):
    """The file is truncated or changed since it was saved, or it has no hash."""


def has_checksum(size: int) -> bool:
    return size % 512 == SHA_LEN


def go_bytes(b: bytes) -> str:
    """A byte string as Go's %v prints a []byte (etcd's error messages use it)."""
    return "[" + " ".join(str(x) for x in b) + "]"


def verify(path: Path, skip_hash_check: bool = False,
           on_bytes: Callable[[int, int], None] | None = None) -> int:
    """Check the trailing hash; returns how many bytes of the file are the database.
    ``on_bytes(hashed, total)`` is called after each MiB hashed (progress)."""
    size = path.stat().st_size
    if not has_checksum(size):
        if not skip_hash_check:
            raise SnapshotHashError(
                "snapshot missing hash but --skip-hash-check=false (a snapshot saved by etcdctl "
                "or etcdutl ends with its SHA-256; for a db file copied from a data dir, pass "
                "--skip-hash-check)")
        return size
    body = size - SHA_LEN
    if skip_hash_check:
        return body
    h = hashlib.sha256()
    with path.open("rb") as f:
        left = body
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
            if on_bytes is not None:
                on_bytes(body - left, body)
        want = f.read(SHA_LEN)
    got = h.digest()
    if got != want:
        raise SnapshotHashError(
            f"expected sha256 {go_bytes(want)}, got {go_bytes(got)} (the snapshot file is "
            "truncated or damaged: save it again)")
    return body


def is_legacy_tar(path: Path) -> bool:
    """An older datastore snapshot (a tar of the RocksDB state) rather than etcd's db."""
    with path.open("rb") as f:
        head = f.read(_TAR_MAGIC_AT + 5)
    return head[_TAR_MAGIC_AT:] == b"ustar"
