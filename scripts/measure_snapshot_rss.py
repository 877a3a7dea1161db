#!/usr/bin/env python
"""Memory of a member while it streams an etcd snapshot of a large store.

Loads one datastore member with ``--mb`` MiB of incompressible values (Txns of 64 puts of
8 KiB), then saves its snapshot (Maintenance.Snapshot, as ``etcdctl snapshot save`` does)
while sampling the member's VmRSS every 50 ms. Reports the store size, the snapshot's size
and time, RSS before / peak / growth, and checks the saved file's SHA-256. With ``--check``
it also runs the real ``bbolt check`` and ``etcdutl snapshot status`` on the file. Not a
CI test: the load takes minutes and the machine's load moves the numbers.

    python scripts/measure_snapshot_rss.py --mb 1100 --check
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc as g
from datastore.testing import refs
from datastore.testing.procs import datastore_proc

VALUE = 8 << 10
PER_TXN = 64
SAMPLE_S = 0.05


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load(ch: grpc.Channel, mb: int) -> int:
    kv = g.KVStub(ch)
    txns = (mb << 20) // (VALUE * PER_TXN) + 1

    def one(t: int) -> None:
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"/big/%09d" % (t * PER_TXN + i),
                                                      value=os.urandom(VALUE)))
               for i in range(PER_TXN)]
        kv.Txn(pb.TxnRequest(success=ops), timeout=120)

    with ThreadPoolExecutor(4) as ex:
        for n, _ in enumerate(ex.map(one, range(txns)), 1):
            if n % 200 == 0:
                print(f"  loaded {n * PER_TXN * VALUE >> 20} MiB", flush=True)
    return txns * PER_TXN * VALUE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=1100, help="MiB of values to load")
    ap.add_argument("--check", action="store_true", help="bbolt check and etcdutl status")
    ap.add_argument("--dir", default=None, help="where the member and the file go")
    a = ap.parse_args()
    base = Path(a.dir or tempfile.mkdtemp(prefix="snaprss-"))
    proc = datastore_proc(base, name="big", extra=["--quota-backend-bytes", str(16 << 30),
                                                   "--snapshot-count", "10000"])
    proc.start(timeout=60)
    assert proc.popen is not None
    pid = proc.popen.pid
    try:
        ch = grpc.insecure_channel(proc.endpoint, options=[
            ("grpc.max_receive_message_length", 64 << 20)])
        t0 = time.monotonic()
        loaded = load(ch, a.mb)
        print(f"loaded {loaded >> 20} MiB in {time.monotonic() - t0:.0f} s")
        st = g.MaintenanceStub(ch).Status(pb.StatusRequest())
        print(f"store: dbSize {st.dbSize >> 20} MiB, revision {st.header.revision}")
        time.sleep(2)  # let the load's memory settle before the baseline (not a sync point)
        before = rss_mb(pid)
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(pid))
                stop.wait(SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out = base / "big.snapshot"
        sha = hashlib.sha256()
        t0 = time.monotonic()
        with out.open("wb") as f:
            last = b""
            for resp in g.MaintenanceStub(ch).Snapshot(pb.SnapshotRequest(), timeout=3600):
                f.write(resp.blob)
                if resp.remaining_bytes == 0:
                    last = resp.blob
                else:
                    sha.update(resp.blob)
        took = time.monotonic() - t0
        stop.set()
        sampler.join()
        size = out.stat().st_size
        ok = sha.digest() == last
        print(f"snapshot: {size >> 20} MiB in {took:.0f} s, sha256 {'ok' if ok else 'WRONG'}")
        print(f"member RSS: before {before:.0f} MiB, peak {peak[0]:.0f} MiB, "
              f"growth {peak[0] - before:.0f} MiB")
        if a.check:
            db = base / "big.db"
            with out.open("rb") as src, db.open("wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
                dst.truncate(size - 32)
            for argv in ([str(refs.binary("bbolt")), "check", str(db)],
                         [str(refs.binary("etcdutl")), "snapshot", "status", str(out), "-w", "table"]):
                t0 = time.monotonic()
                r = subprocess.run(argv, capture_output=True, text=True)
                print(f"$ {Path(argv[0]).name} {' '.join(argv[1:2])}: ({time.monotonic() - t0:.0f} s)")
                print((r.stdout + r.stderr).strip()[-1500:])
            db.unlink()
        return 0 if ok else 1
    finally:
        proc.stop()


if __name__ == "__main__":
    sys.exit(main())
