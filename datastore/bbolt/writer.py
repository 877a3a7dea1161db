"""Write a bbolt file from sorted key/value streams, one page at a time.

A B+tree bulk load: leaf pages are filled in key order and written as soon as they are
full; each written page hands its first key and page id to the level above, whose pending
branch page is written in turn when full. Memory is one pending page per tree level, so a
bucket of any size is written with a few pages of memory. Pages are appended in id order;
the meta pages (0, 1) and the freelist (2) are written last, once the root page id and the
high-water mark are known. The result opens in bbolt like a file it wrote itself:
``bbolt check`` finds every page reachable exactly once and keys in order.

    w = BoltWriter(f)
    kb = w.bucket()
    for k, v in sorted_items:
        kb.put(k, v)
    w.finish({b"key": kb.finish()})
"""

from __future__ import annotations

from typing import BinaryIO

from datastore.bbolt.layout import (
    BRANCH_ELEMENT,
    BRANCH_PAGE,
    BUCKET_HEADER,
    BUCKET_LEAF_FLAG,
    DEFAULT_PAGE_SIZE,
    FREELIST_PAGE,
    LEAF_ELEMENT,
    LEAF_PAGE,
    MAX_KEY_SIZE,
    MAX_VALUE_SIZE,
    PAGE_HEADER,
    BoltError,
    branch_body,
    leaf_body,
    meta_page,
)

FIRST_DATA_PAGE = 3  # 0 and 1: meta, 2: freelist


class BoltWriter:
    """Appends pages to ``f`` (a new, seekable binary file) and finishes it with meta pages."""

    def __init__(self, f: BinaryIO, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.f = f
        self.page_size = page_size
        self.next_pgid = FIRST_DATA_PAGE
        self._finished = False
        f.seek(0)
        f.write(b"\0" * (FIRST_DATA_PAGE * page_size))  # meta and freelist come last

    def write_page(self, flags: int, count: int, body: bytes) -> int:
        """Append one page (with overflow pages if ``body`` needs them); returns its id."""
        ps = self.page_size
        size = PAGE_HEADER.size + len(body)
        npages = -(-size // ps)
        pgid = self.next_pgid
        self.f.write(PAGE_HEADER.pack(pgid, flags, count, npages - 1))
        self.f.write(body)
        self.f.write(b"\0" * (npages * ps - size))
        self.next_pgid += npages
        return pgid

    def bucket(self, inline_ok: bool = True) -> BucketBuilder:
        return BucketBuilder(self, inline_ok)

    def finish(self, buckets: dict[bytes, bytes]) -> int:
        """Write the root bucket holding ``buckets`` (name -> a ``BucketBuilder.finish()``
        value), the empty freelist and both meta pages. Returns the file's size."""
        root = BucketBuilder(self, inline_ok=False)
        for name in sorted(buckets):
            root.put(name, buckets[name], BUCKET_LEAF_FLAG)
        root_pgid, _ = BUCKET_HEADER.unpack_from(root.finish())
        hwm = self.next_pgid
        ps = self.page_size
        self.f.seek(0)
        # Both meta pages describe the same tree; bbolt reads the one with the higher txid.
        self.f.write(meta_page(ps, 0, root_pgid, 2, hwm, 0))
        self.f.write(meta_page(ps, 1, root_pgid, 2, hwm, 1))
        self.f.write(PAGE_HEADER.pack(2, FREELIST_PAGE, 0, 0).ljust(ps, b"\0"))
        self.f.seek(hwm * ps)
        self._finished = True
        return hwm * ps


class BucketBuilder:
    """One bucket's tree, fed keys in strictly increasing order.

    ``finish()`` returns the value its parent stores under the bucket's name: the bucket
    header, followed by the whole leaf page when the bucket is small enough to be kept
    inline (bbolt's rule: a quarter of a page, and no nested buckets).
    """

    def __init__(self, writer: BoltWriter, inline_ok: bool = True) -> None:
        self.w = writer
        self.inline_ok = inline_ok
        self.page_limit = writer.page_size
        self._leaf: list[tuple[int, bytes, bytes]] = []
        self._leaf_size = PAGE_HEADER.size
        # levels[i]: the pending branch page i + 1 levels above the leaves, and its size
        self._levels: list[list[tuple[bytes, int]]] = []
        self._level_sizes: list[int] = []
        self._last_key: bytes | None = None
        self._nested = False
        self.count = 0

    def put(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if not key:
            raise BoltError("bbolt: key required")
        if len(key) > MAX_KEY_SIZE:
            raise BoltError(f"bbolt: key too large ({len(key)} bytes)")
        if len(value) > MAX_VALUE_SIZE:
            raise BoltError(f"bbolt: value too large ({len(value)} bytes)")
        if self._last_key is not None and key <= self._last_key:
            raise BoltError(f"bbolt writer: keys out of order ({key!r} after {self._last_key!r})")
        self._last_key = key
        if flags & BUCKET_LEAF_FLAG:
            self._nested = True
        size = LEAF_ELEMENT.size + len(key) + len(value)
        if self._leaf and self._leaf_size + size > self.page_limit:
            self._flush_leaf()
        self._leaf.append((flags, key, value))
        self._leaf_size += size
        self.count += 1

    def _flush_leaf(self) -> None:
        items = self._leaf
        pgid = self.w.write_page(LEAF_PAGE, len(items), leaf_body(items))
        self._leaf = []
        self._leaf_size = PAGE_HEADER.size
        self._push(0, items[0][1] if items else b"", pgid)

    def _push(self, level: int, key: bytes, pgid: int) -> None:
        if level == len(self._levels):
            self._levels.append([])
            self._level_sizes.append(PAGE_HEADER.size)
        size = BRANCH_ELEMENT.size + len(key)
        # at least two children per branch page (it overflows if their keys are long), or a
        # level would be no smaller than the one below it and the tree would never close
        if len(self._levels[level]) >= 2 and self._level_sizes[level] + size > self.page_limit:
            self._flush_branch(level)
        self._levels[level].append((key, pgid))
        self._level_sizes[level] += size

    def _flush_branch(self, level: int) -> None:
        items = self._levels[level]
        pgid = self.w.write_page(BRANCH_PAGE, len(items), branch_body(items))
        self._levels[level] = []
        self._level_sizes[level] = PAGE_HEADER.size
        self._push(level + 1, items[0][0], pgid)

    def finish(self) -> bytes:
        if (self.inline_ok and not self._levels and not self._nested
                and self._leaf_size <= self.w.page_size // 4):
            inline = PAGE_HEADER.pack(0, LEAF_PAGE, len(self._leaf), 0) + leaf_body(self._leaf)
            return BUCKET_HEADER.pack(0, 0) + inline
        if self._leaf or not self._levels:
            self._flush_leaf()  # the last leaf (an empty one for an empty bucket)
        level = 0
        while True:
            top = level == len(self._levels) - 1
            if top and len(self._levels[level]) == 1:
                root = self._levels[level][0][1]
                break
            self._flush_branch(level)  # a lower level's last page, or a full top level
            level += 1
        return BUCKET_HEADER.pack(root, 0)
