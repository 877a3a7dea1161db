"""RocksDB memory bounds of the state database (real RocksDB files in a temp dir)."""

from __future__ import annotations

from pathlib import Path

from datastore.storage.backend import Backend


def test_overwritten_meta_records_do_not_pile_up_in_memory(tmp_path: Path) -> None:
    """Every apply rewrites a few meta records; RocksDB keeps each old version in the
    memtable until a flush, so the meta family's memtables must stay small."""
    b = Backend(tmp_path / "state")
    try:
        meta = b.handle("meta")
        for i in range(0, 250_000, 1000):
            wb = b.batch()
            for j in range(i, i + 1000):
                wb.put(b"applied_index", j.to_bytes(8, "big"), meta)
                wb.put(b"current_rev", j.to_bytes(8, "big"), meta)
            b.write(wb, sync=False)
        used = b.cf("meta").property_int_value("rocksdb.size-all-mem-tables") or 0
    finally:
        b.close()
    # active + one being flushed; the 64 MiB default would hold all ~20 MiB written here
    assert used <= 9 << 20, used
