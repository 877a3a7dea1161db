"""The bbolt file format: page and element layouts, flags, the meta page and its checksum.

All integers are little-endian (bbolt writes its structs as the machine lays them out, and
every platform etcd ships on is little-endian). A file is an array of pages of one size
(the meta page says which); page ``n`` starts at byte ``n * page_size``. Pages 0 and 1 are
meta pages, the newer valid one wins. See docs/bbolt-format.md.
"""

from __future__ import annotations

import struct

MAGIC = 0xED0CDAED
VERSION = 2
DEFAULT_PAGE_SIZE = 4096

# page header: id, flags, count, overflow (pages after this one that belong to it)
PAGE_HEADER = struct.Struct("<QHHI")
# leaf element: flags, pos (from the element's own start to its key), key size, value size
LEAF_ELEMENT = struct.Struct("<IIII")
# branch element: pos, key size, child page id
BRANCH_ELEMENT = struct.Struct("<IIQ")
# a bucket's value in its parent: root page id (0: inline page follows), sequence
BUCKET_HEADER = struct.Struct("<QQ")
# meta: magic, version, page size, flags, root bucket (root, sequence), freelist page id,
# high-water mark (first page id past the end), transaction id; the FNV-1a 64 checksum of
# these 56 bytes follows
META = struct.Struct("<IIIIQQQQQ")
CHECKSUM = struct.Struct("<Q")

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01  # a leaf element whose value is a nested bucket

NO_FREELIST = 0xFFFFFFFFFFFFFFFF  # meta.freelist when the freelist is not stored
MAX_KEY_SIZE = 32768
MAX_VALUE_SIZE = (1 << 31) - 2
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 1 << 16  # bbolt accepts larger, but no real file uses them


class BoltError(ValueError):
    """The file is not a bbolt database, or it is damaged (the message says where)."""


def fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def meta_page(page_size: int, pgid: int, root: int, freelist: int, hwm: int, txid: int) -> bytes:
    """A whole meta page (pgid 0 or 1), checksum included."""
    body = META.pack(MAGIC, VERSION, page_size, 0, root, 0, freelist, hwm, txid)
    page = PAGE_HEADER.pack(pgid, META_PAGE, 0, 0) + body + CHECKSUM.pack(fnv64a(body))
    return page.ljust(page_size, b"\0")


def leaf_body(items: list[tuple[int, bytes, bytes]]) -> bytes:
    """A leaf page's elements then their data; ``items`` are (flags, key, value)."""
    n = len(items)
    elems = bytearray()
    data = bytearray()
    pack = LEAF_ELEMENT.pack
    for i, (flags, k, v) in enumerate(items):
        elems += pack(flags, (n - i) * LEAF_ELEMENT.size + len(data), len(k), len(v))
        data += k
        data += v
    return bytes(elems + data)


def branch_body(items: list[tuple[bytes, int]]) -> bytes:
    """A branch page's elements then their keys; ``items`` are (first key, child page id)."""
    n = len(items)
    elems = bytearray()
    data = bytearray()
    pack = BRANCH_ELEMENT.pack
    for i, (k, pgid) in enumerate(items):
        elems += pack((n - i) * BRANCH_ELEMENT.size + len(data), len(k), pgid)
        data += k
    return bytes(elems + data)
