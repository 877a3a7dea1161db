"""Read a bbolt file: its buckets and their keys in order, checking every page it touches.

Nothing in the file is trusted: page ids must lie below the high-water mark and inside the
file, a page must name itself and be of the kind its parent expects, element offsets must
stay inside their page, keys must be strictly increasing, and no page may be visited
twice (which also rules out loops). Any violation is a ``BoltError`` saying where, so a
truncated, damaged or foreign file is refused instead of crashing or hanging the reader.

Pages are read with ``pread`` one at a time, so memory stays flat for any file size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from datastore.bbolt.layout import (
    BRANCH_ELEMENT,
    BRANCH_PAGE,
    BUCKET_HEADER,
    BUCKET_LEAF_FLAG,
    CHECKSUM,
    FREELIST_PAGE,
    LEAF_ELEMENT,
    LEAF_PAGE,
    MAGIC,
    MAX_PAGE_SIZE,
    META,
    MIN_PAGE_SIZE,
    NO_FREELIST,
    PAGE_HEADER,
    VERSION,
    BoltError,
    fnv64a,
)

MAX_DEPTH = 64  # far deeper than any real tree; a deeper one is damaged


@dataclass(frozen=True)
class Meta:
    page_size: int
    root: int
    freelist: int
    hwm: int
    txid: int


def _parse_meta(buf: bytes, offset: int) -> Meta | str:
    """The meta at ``offset`` (past its page header), or why it is not valid."""
    end = offset + META.size + CHECKSUM.size
    if len(buf) < end:
        return "file too short for a meta page"
    magic, version, page_size, _flags, root, _seq, freelist, hwm, txid = META.unpack_from(buf, offset)
    if magic != MAGIC:
        return "invalid database (no bbolt magic number)"
    if version != VERSION:
        return f"version mismatch (bbolt file version {version}, expected {VERSION})"
    (checksum,) = CHECKSUM.unpack_from(buf, offset + META.size)
    if checksum != fnv64a(buf[offset:offset + META.size]):
        return "checksum error in the meta page"
    if page_size < MIN_PAGE_SIZE or page_size > MAX_PAGE_SIZE or page_size & (page_size - 1):
        return f"invalid page size {page_size}"
    return Meta(page_size, root, freelist, hwm, txid)


class BoltReader:
    """A bbolt file open for reading: ``buckets()`` lists the top-level buckets."""

    def __init__(self, path: str | os.PathLike[str], size: int | None = None) -> None:
        """``size``: how many bytes of the file are the database (a snapshot's trailing
        hash is not); the whole file by default."""
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(self.fd).st_size if size is None else size
            self.meta = self._choose_meta()
        except BaseException:
            os.close(self.fd)
            raise
        self._buckets: list[tuple[bytes, bytes]] | None = None
        self.pages_read = 0  # leaf and branch pages (with overflow) read so far: progress

    def pages_to_read(self) -> int:
        """About how many pages reading every bucket visits (``pages_read`` ends near it):
        the pages below the high-water mark but the two meta pages, the free ones and the
        freelist's own, as its page says (the whole file if it has no stored freelist)."""
        m = self.meta
        total = m.hwm - 2
        if m.freelist == NO_FREELIST or not 2 <= m.freelist < m.hwm:
            return total
        head = os.pread(self.fd, PAGE_HEADER.size + 8, m.freelist * m.page_size)
        if len(head) != PAGE_HEADER.size + 8:
            return total
        _, flags, count, overflow = PAGE_HEADER.unpack_from(head)
        if flags != FREELIST_PAGE:
            return total
        if count == 0xFFFF:  # bbolt's marker: the real count is the first element
            count = int.from_bytes(head[PAGE_HEADER.size:], "little")
        return max(1, total - count - overflow - 1)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> BoltReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- meta ---------------------------------------------------------------------------
    def _choose_meta(self) -> Meta:
        head = os.pread(self.fd, min(self.size, MAX_PAGE_SIZE + 128), 0)
        if len(head) < PAGE_HEADER.size + META.size + CHECKSUM.size:
            raise BoltError(f"invalid database: the file has {self.size} bytes, too small for "
                            "a bbolt database")
        m0 = _parse_meta(head, PAGE_HEADER.size)
        candidates = [m0] if isinstance(m0, Meta) else []
        # bbolt finds meta 1 at the page size meta 0 names (or the usual 4096 if meta 0 is bad)
        ps1 = m0.page_size if isinstance(m0, Meta) else 4096
        if self.size >= ps1 + PAGE_HEADER.size + META.size + CHECKSUM.size:
            m1 = _parse_meta(os.pread(self.fd, PAGE_HEADER.size + META.size + CHECKSUM.size, ps1),
                             PAGE_HEADER.size)
            if isinstance(m1, Meta):
                candidates.append(m1)
        if not candidates:
            raise BoltError(f"invalid database: {m0}")
        # the newest meta first; fall back to the other one if it points outside the file
        problems = []
        for m in sorted(candidates, key=lambda m: m.txid, reverse=True):
            why = self._meta_problem(m)
            if why is None:
                return m
            problems.append(why)
        raise BoltError("; ".join(problems))

    def _meta_problem(self, m: Meta) -> str | None:
        need = m.hwm * m.page_size
        if m.hwm < 3:
            return f"invalid database: high-water mark {m.hwm} below the first data page"
        if need > self.size:
            return (f"file size too small: the database needs {need} bytes ({m.hwm} pages of "
                    f"{m.page_size}) and the file has {self.size} (truncated?)")
        if not 2 <= m.root < m.hwm:
            return f"invalid database: root page {m.root} outside the file"
        return None

    # ---- pages --------------------------------------------------------------------------
    def _page(self, pgid: int, seen: bytearray, path: str) -> tuple[int, int, bytes]:
        """(flags, element count, the page's bytes with its overflow) of leaf or branch
        page ``pgid``, which must not have been visited in this walk (``seen``)."""
        m = self.meta
        if not 2 <= pgid < m.hwm:
            raise BoltError(f"page {pgid} ({path}): out of bounds (high-water mark {m.hwm})")
        byte, bit = divmod(pgid, 8)
        if seen[byte] & (1 << bit):
            raise BoltError(f"page {pgid} ({path}): multiple references")
        seen[byte] |= 1 << bit
        head = os.pread(self.fd, PAGE_HEADER.size, pgid * m.page_size)
        if len(head) != PAGE_HEADER.size:
            raise BoltError(f"page {pgid} ({path}): truncated")
        pid, flags, count, overflow = PAGE_HEADER.unpack(head)
        if pid != pgid:
            raise BoltError(f"page {pgid} ({path}): the page calls itself {pid} (damaged)")
        if flags not in (LEAF_PAGE, BRANCH_PAGE):
            raise BoltError(f"page {pgid} ({path}): a leaf or branch page expected, found "
                            f"flags {flags:#x}")
        if pgid + overflow >= m.hwm:
            raise BoltError(f"page {pgid} ({path}): overflow of {overflow} pages runs past the "
                            f"high-water mark {m.hwm}")
        span = (overflow + 1) * m.page_size
        buf = os.pread(self.fd, span, pgid * m.page_size)
        if len(buf) != span:
            raise BoltError(f"page {pgid} ({path}): truncated")
        self.pages_read += overflow + 1
        return flags, count, buf

    # ---- elements -----------------------------------------------------------------------
    @staticmethod
    def _leaf_items(buf: bytes, count: int, where: str) -> Iterator[tuple[bytes, bytes, int]]:
        n = len(buf)
        if PAGE_HEADER.size + count * LEAF_ELEMENT.size > n:
            raise BoltError(f"{where}: {count} elements do not fit in the page")
        for i in range(count):
            at = PAGE_HEADER.size + i * LEAF_ELEMENT.size
            flags, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(buf, at)
            start = at + pos
            if start + ksize + vsize > n:
                raise BoltError(f"{where}: element {i} points outside the page")
            yield (buf[start:start + ksize], buf[start + ksize:start + ksize + vsize], flags)

    @staticmethod
    def _branch_items(buf: bytes, count: int, where: str) -> list[tuple[bytes, int]]:
        n = len(buf)
        if count == 0 or PAGE_HEADER.size + count * BRANCH_ELEMENT.size > n:
            raise BoltError(f"{where}: a branch page with {count} elements")
        out = []
        for i in range(count):
            at = PAGE_HEADER.size + i * BRANCH_ELEMENT.size
            pos, ksize, child = BRANCH_ELEMENT.unpack_from(buf, at)
            if at + pos + ksize > n:
                raise BoltError(f"{where}: element {i} points outside the page")
            out.append((buf[at + pos:at + pos + ksize], child))
        return out

    # ---- buckets ------------------------------------------------------------------------
    def buckets(self) -> list[tuple[bytes, bytes]]:
        """(name, bucket value) of each top-level bucket, in name order; a top-level key
        that is not a bucket is an error (etcd never writes one)."""
        if self._buckets is None:
            out = []
            for key, value, flags in self._tree(self.meta.root, "root bucket"):
                if not flags & BUCKET_LEAF_FLAG:
                    raise BoltError(f"root bucket: key {key!r} is not a bucket")
                out.append((key, value))
            self._buckets = out
        return self._buckets

    def bucket(self, name: bytes) -> bytes | None:
        """The value of top-level bucket ``name`` (for ``items``), or None."""
        return dict(self.buckets()).get(name)

    def items(self, bucket_value: bytes, name: str = "bucket") -> Iterator[tuple[bytes, bytes, int]]:
        """(key, value, flags) of a bucket, given its value in the parent, in key order."""
        if len(bucket_value) < BUCKET_HEADER.size:
            raise BoltError(f"bucket {name}: header is {len(bucket_value)} bytes, not 16")
        root, _seq = BUCKET_HEADER.unpack_from(bucket_value)
        if root == 0:
            inline = bucket_value[BUCKET_HEADER.size:]
            if len(inline) < PAGE_HEADER.size:
                raise BoltError(f"bucket {name}: inline page too short")
            _, flags, count, _ = PAGE_HEADER.unpack_from(inline)
            if flags != LEAF_PAGE:
                raise BoltError(f"bucket {name}: inline page is not a leaf (flags {flags:#x})")
            yield from self._ordered(self._leaf_items(inline, count, f"bucket {name} (inline)"),
                                     f"bucket {name}")
            return
        yield from self._tree(root, f"bucket {name}")

    def _tree(self, root: int, name: str) -> Iterator[tuple[bytes, bytes, int]]:
        seen = bytearray(-(-self.meta.hwm // 8))

        def walk(pgid: int, depth: int) -> Iterator[tuple[bytes, bytes, int]]:
            if depth > MAX_DEPTH:
                raise BoltError(f"{name}: tree deeper than {MAX_DEPTH} levels (damaged)")
            flags, count, buf = self._page(pgid, seen, name)
            where = f"page {pgid} ({name})"
            if flags == BRANCH_PAGE:
                for _key, child in self._branch_items(buf, count, where):
                    yield from walk(child, depth + 1)
            else:
                yield from self._leaf_items(buf, count, where)

        yield from self._ordered(walk(root, 0), name)

    @staticmethod
    def _ordered(it: Iterator[tuple[bytes, bytes, int]], name: str) -> Iterator[tuple[bytes, bytes, int]]:
        last: bytes | None = None
        for item in it:
            if last is not None and item[0] <= last:
                raise BoltError(f"{name}: keys out of order ({item[0]!r} after {last!r})")
            last = item[0]
            yield item
