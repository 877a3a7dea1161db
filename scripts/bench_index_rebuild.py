#!/usr/bin/env python
"""How long a member takes to rebuild its in-memory key index from the ``key`` family.

This is what a learner does after installing a snapshot (and every member at start-up),
and what dominated datastore's snapshot catch-up at 1M keys (scripts/bench_snapshot.py
runs the whole catch-up against etcd 3.4). Here the rebuild alone is timed, in a fresh
process per run, so before/after comparisons do not depend on the transfer:

1. a store of N keys is written once (1 KiB incompressible values, transactions of 100
   puts as bench_snapshot loads them, plus updates, deletions and leased keys) into
   ``--data`` (reused when it already holds N keys);
2. each implementation (this tree, and ``--before SRC``: another checkout on
   PYTHONPATH) opens it and runs ``KVStore.restore()``; reported: wall and CPU seconds,
   peak RSS, and a digest of the rebuilt index, which must be the same for every
   implementation.

    python scripts/bench_index_rebuild.py --keys 1000000 --before /path/to/old/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the measured process: the rebuild, then a digest of what it built.
PROBE = r"""
import hashlib, json, resource, sys, time
from datastore.storage.backend import Backend
from datastore.mvcc.kvstore import KVStore
be = Backend(sys.argv[1])
kv = KVStore(be)
t0, c0 = time.perf_counter(), time.process_time()
leased = sorted((x.key, x.lease) for x in kv.restore())
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
h = hashlib.sha256()
for ki in kv.index.scan(b"\x00", b""):
    h.update(repr(ki).encode())
h.update(repr(leased).encode())
h.update(repr((kv.current_rev, kv.compact_rev, kv.index.latest, len(kv.index._dead))).encode())
print(json.dumps({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "keys": len(kv.index),
                  "leased": len(leased), "max_rss_mb": resource.getrusage(
                      resource.RUSAGE_SELF).ru_maxrss // 1024, "digest": h.hexdigest()[:16]}))
"""


def build(path: Path, keys: int, value_bytes: int) -> None:
    """N keys in txns of 100; every 10th key updated, every 100th deleted, every 50th leased."""
    sys.path.insert(0, str(ROOT))
    from datastore.mvcc.kvstore import KVStore
    from datastore.storage.backend import Backend

    be = Backend(path)
    kv = KVStore(be)
    rnd = os.urandom(1 << 20)

    def value(i: int) -> bytes:
        off = (i * 7919) % ((1 << 20) - value_bytes)
        return rnd[off:off + value_bytes]

    def txn(ops: list[tuple[str, int]]) -> None:
        b = be.batch()
        tx = kv.write(b)
        for op, i in ops:
            k = b"/bench/%010d" % i
            if op == "put":
                tx.put(k, value(i), 7 if i % 50 == 0 else 0)
            else:
                tx.delete_range(k, None)
        tx.end()
        be.write(b, False)
        kv.flushed()

    for start in range(0, keys, 100):
        txn([("put", i) for i in range(start, min(keys, start + 100))])
        if start % 100_000 == 0:
            print(f"  loading: {start:,} keys", file=sys.stderr, flush=True)
    updates = list(range(0, keys, 10))
    for s in range(0, len(updates), 100):
        txn([("put", i) for i in updates[s:s + 100]])
    deletes = list(range(3, keys, 100))
    for s in range(0, len(deletes), 100):
        txn([("del", i) for i in deletes[s:s + 100]])
    (path / "BENCH_KEYS").write_text(str(keys))
    be.close()


def probe(path: Path, source: Path) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(source))
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], env=env, cwd=source,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=1024)
    ap.add_argument("--data", type=Path, default=None,
                    help="where to keep the store (default: a directory under /tmp per N)")
    ap.add_argument("--before", type=Path, default=None, help="a checkout of the old code")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    data = a.data or Path(f"/tmp/datastore-bench-index-{a.keys}")
    marker = data / "BENCH_KEYS"
    if not (marker.exists() and marker.read_text() == str(a.keys)):
        print(f"writing {a.keys:,} keys to {data}", file=sys.stderr, flush=True)
        build(data, a.keys, a.value_bytes)
    impls = [("datastore", ROOT)] + ([("before", a.before)] if a.before else [])
    rows: dict[str, list[dict[str, object]]] = {}
    for _ in range(a.repeat):  # interleaved
        for label, src in impls:
            r = probe(data, src)
            print(f"  {label}: {r}", file=sys.stderr, flush=True)
            rows.setdefault(label, []).append(r)
    print(f"\nKey index rebuild, {a.keys:,} keys ({a.value_bytes} B values), best of {a.repeat}:\n")
    print("| code | rebuild wall s | cpu s | peak RSS MB | keys | digest |")
    print("|---|---|---|---|---|---|")
    for label, rs in rows.items():
        best = min(rs, key=lambda r: r["wall_s"])  # type: ignore[arg-type,return-value]
        print(f"| {label} | {best['wall_s']} | {best['cpu_s']} | {best['max_rss_mb']} "
              f"| {best['keys']:,} | {best['digest']} |")
    digests = {r["digest"] for rs in rows.values() for r in rs}
    if len(digests) != 1:
        print("DIGESTS DIFFER: the implementations built different indexes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
