"""The bbolt writer and reader: round trips of every page kind, judged by the real
``bbolt check`` (bbolt v1.4.3, the version etcd 3.6 links), and damaged files refused."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from datastore.bbolt import BoltError, BoltReader, BoltWriter
from datastore.bbolt.layout import BRANCH_PAGE, BUCKET_LEAF_FLAG, LEAF_PAGE, PAGE_HEADER
from datastore.testing import refs

Tree = dict[bytes, "bytes | Tree"]


def bbolt_check(path: Path) -> str:
    try:
        bb = refs.binary("bbolt")
    except refs.RefError as e:
        raise AssertionError(str(e)) from None
    r = subprocess.run([str(bb), "check", str(path)], capture_output=True, text=True, timeout=120)
    return (r.stdout + r.stderr).strip()


def write(path: Path, buckets: dict[bytes, Tree]) -> None:
    with path.open("wb") as f:
        w = BoltWriter(f)

        def build(tree: Tree) -> bytes:
            b = w.bucket()
            for k in sorted(tree):
                v = tree[k]
                if isinstance(v, dict):
                    b.put(k, build(v), BUCKET_LEAF_FLAG)
                else:
                    b.put(k, v)
            return b.finish()

        w.finish({name: build(t) for name, t in buckets.items()})


def read(path: Path) -> dict[bytes, Tree]:
    with BoltReader(path) as r:
        def load(value: bytes, name: str) -> Tree:
            out: Tree = {}
            for k, v, flags in r.items(value, name):
                out[k] = load(v, k.decode(errors="replace")) if flags & BUCKET_LEAF_FLAG else v
            return out

        return {name: load(v, name.decode()) for name, v in r.buckets()}


def sample() -> dict[bytes, Tree]:
    rnd = random.Random(7)
    big = {rnd.randbytes(rnd.randint(1, 60)): rnd.randbytes(rnd.randint(0, 400))
           for _ in range(30_000)}  # thousands of leaves: three levels of branch pages
    return {
        b"big": big,
        b"empty": {},
        b"small": {b"a": b"1", b"b": b""},  # inline in its parent's leaf
        b"overflow": {b"k%02d" % i: rnd.randbytes(rnd.choice([5, 4000, 9000, 70_000]))
                      for i in range(40)},
        b"nested": {b"child": {b"x": b"y"}, b"grown": {b"n%05d" % i: b"v" * 40 for i in range(900)},
                    b"plain": b"value", b"deeper": {b"inner": {b"z": b"1"}}},
        b"longkeys": {bytes([i]) * 3000: b"v" for i in range(1, 30)},  # branch pages overflow
    }


def test_round_trip_passes_bbolt_check(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    want = sample()
    write(path, want)
    assert bbolt_check(path) == "OK"
    assert read(path) == want
    with BoltReader(path) as r:  # the big bucket really is a tree of branch pages
        root = int.from_bytes(r.bucket(b"big")[:8], "little")
    assert PAGE_HEADER.unpack_from(path.read_bytes(), root * 4096)[1] == BRANCH_PAGE


def test_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    write(path, {})
    assert bbolt_check(path) == "OK"
    assert read(path) == {}
    assert path.stat().st_size == 4 * 4096  # two meta pages, the freelist, the root leaf


def test_writer_refuses_unsorted_and_empty_keys(tmp_path: Path) -> None:
    with (tmp_path / "x.db").open("wb") as f:
        b = BoltWriter(f).bucket()
        b.put(b"b", b"")
        with pytest.raises(BoltError, match="out of order"):
            b.put(b"a", b"")
        with pytest.raises(BoltError, match="out of order"):
            b.put(b"b", b"")
        with pytest.raises(BoltError, match="key required"):
            b.put(b"", b"")


def damaged(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "d.db"
    write(path, {b"big": sample()[b"big"], b"small": {b"a": b"1"}})
    data = bytearray(path.read_bytes())
    change(data)
    path.write_bytes(bytes(data))
    return path


def first_page(data: bytearray, flags: int) -> int:
    for pgid in range(3, len(data) // 4096):
        if PAGE_HEADER.unpack_from(data, pgid * 4096)[1] == flags:
            return pgid
    raise AssertionError("no such page")


@pytest.mark.parametrize(("name", "change", "error"), [
    ("truncated", lambda d: d.__delitem__(slice(len(d) // 2, None)), "file size too small"),
    ("not bbolt", lambda d: d.__setitem__(slice(0, 8192), b"\x42" * 8192), "invalid database"),
    ("meta checksum", lambda d: (d.__setitem__(20, d[20] ^ 1), d.__setitem__(4096 + 20, 0)),
     "checksum error|invalid database|version mismatch"),
    ("page id", lambda d: d.__setitem__(first_page(d, LEAF_PAGE) * 4096, 0xEE),
     "calls itself"),
    ("page kind", lambda d: d.__setitem__(first_page(d, LEAF_PAGE) * 4096 + 8, 0x10),
     "leaf or branch page expected"),
    ("element offset", lambda d: d.__setitem__(slice(first_page(d, LEAF_PAGE) * 4096 + 20,
                                                     first_page(d, LEAF_PAGE) * 4096 + 24),
                                               b"\xff\xff\x00\x00"), "outside the page"),
    ("loop", lambda d: d.__setitem__(slice(first_page(d, BRANCH_PAGE) * 4096 + 24,
                                           first_page(d, BRANCH_PAGE) * 4096 + 32),
                                     first_page(d, BRANCH_PAGE).to_bytes(8, "little")),
     "multiple references"),
])
def test_damaged_files_are_refused(tmp_path: Path, name: str, change, error: str) -> None:  # type: ignore[no-untyped-def]
    path = damaged(tmp_path, change)
    with pytest.raises(BoltError, match=error):
        read(path)


def test_out_of_order_keys_are_refused(tmp_path: Path) -> None:
    def swap_first_keys(d: bytearray) -> None:
        pgid = first_page(d, LEAF_PAGE)
        base = pgid * 4096 + 16
        # point element 0 at element 1's key and value: a repeated key
        pos1 = int.from_bytes(d[base + 16 + 4:base + 16 + 8], "little")
        d[base + 4:base + 8] = (pos1 + 16).to_bytes(4, "little")
        d[base + 8:base + 16] = d[base + 16 + 8:base + 32]
    with pytest.raises(BoltError, match="out of order"):
        read(damaged(tmp_path, swap_first_keys))
