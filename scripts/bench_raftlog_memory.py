#!/usr/bin/env python
"""Memory the raft log holds with a long log (a large --snapshot-count): tracemalloc.

Appends N entries (default 200,000 of 512 B, as a member with --snapshot-count above N
keeps them all) to the durable raft log in batches, as Readys would, never compacting,
then prints the Python memory the log holds, what it counts itself, and the time to
read the oldest 10,000 entries back (from disk, once they left the cache). ``--src``
runs another tree's ``datastore`` (e.g. a checkout of the previous version) for
comparison.

    python scripts/bench_raftlog_memory.py
    python scripts/bench_raftlog_memory.py --src /tmp/old-tree
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--src", help="import datastore from this tree instead")
    a = ap.parse_args()
    sys.path.insert(0, a.src or str(Path(__file__).resolve().parent.parent))
    from datastore.raft.types import Entry, HardState
    from datastore.server.raftlog import DurableStorage
    from datastore.storage.backend import WAL_FAMILIES, Backend

    d = tempfile.mkdtemp(prefix="raftlog-mem-")
    b = Backend(Path(d) / "wal", WAL_FAMILIES)
    st = DurableStorage(b)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    for lo in range(1, a.entries + 1, a.batch):
        ents = tuple(Entry(term=1, index=i, data=i.to_bytes(8, "big") * (a.size // 8))
                     for i in range(lo, min(lo + a.batch, a.entries + 1)))
        st.save(HardState(1, 1, ents[-1].index), ents, None, sync=False)
    write_s = time.perf_counter() - t0
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    t0 = time.perf_counter()
    n = len(st.entries(1, 10_001))
    read_s = time.perf_counter() - t0
    print(f"{a.entries:,} entries of {a.size} B: the log holds {held / 2**20:.1f} MiB of Python "
          f"memory (own count: {getattr(st, 'cache_bytes', 0) / 2**20:.1f} MiB in "
          f"{getattr(st, 'cache_entries', a.entries):,} entries); appended in {write_s:.1f} s; "
          f"oldest {n:,} read back in {read_s * 1000:.0f} ms")
    del st
    b.close()
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
