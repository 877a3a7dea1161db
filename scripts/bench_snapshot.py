#!/usr/bin/env python
"""Snapshot catch-up of a new learner, side by side: real etcd 3.4 vs datastore.

For each server: one member is loaded with N keys of 1 KiB (concurrent Txns of many puts),
then with enough small writes that its raft log is compacted past them, so a learner added
with MemberAdd(isLearner) must be sent a snapshot. The learner is started and, every 50 ms
until its applied index reaches the leader's, the leader's RSS (VmRSS) and CPU time are
sampled. Reported per server: store size, catch-up time (learner start to caught up),
leader RSS before / peak / growth, leader CPU seconds during the catch-up; then the ratio
of catch-up times. Not a CI test: the machine's load moves the numbers.

    python scripts/bench_snapshot.py --keys 1000000
    python scripts/bench_snapshot.py --keys 200000 --before /work/main   # + the old code
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc, free_port

PAD_WRITES = 6000  # > etcd 3.4's fixed 5000 catch-up entries, so its log is compacted too
SNAPSHOT_COUNT = "1000"
SAMPLE_S = 0.05


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def load(stub: rpc_pb2_grpc.KVStub, n: int, value_bytes: int, batch: int = 100,
         workers: int = 8) -> float:
    # incompressible values (a slice of one random buffer each), so no image compresses
    noise = os.urandom(1 << 20)
    done = [0]

    def one(start: int) -> None:
        ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
            key=b"/bench/%010d" % i,
            value=noise[(off := (i * 7919) % ((1 << 20) - value_bytes)):off + value_bytes]))
            for i in range(start, min(n, start + batch))]
        stub.Txn(rpc_pb2.TxnRequest(success=ops), timeout=300)
        done[0] += len(ops)
        if done[0] % 100_000 < batch:
            print(f"  loaded {done[0]}/{n}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, range(0, n, batch)))
    with ThreadPoolExecutor(workers) as ex:  # small writes: the log moves past the load
        list(ex.map(lambda i: stub.Put(rpc_pb2.PutRequest(key=b"/pad/%d" % (i % 64), value=b"p"),
                                       timeout=60), range(PAD_WRITES)))
    return time.perf_counter() - t0


def status(proc: ServerProc) -> rpc_pb2.StatusResponse:
    with grpc.insecure_channel(proc.endpoint) as ch:
        return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=2)


def run(kind: str, base: Path, keys: int, value_bytes: int, source: str | None) -> dict[str, float]:
    make = etcd_proc if kind == "etcd" else datastore_proc
    base.mkdir(parents=True, exist_ok=True)
    # The servers run ``python -m datastore`` from our working directory, which comes first
    # on their sys.path: start them elsewhere so --before's PYTHONPATH picks the code.
    os.chdir(base)
    extra = ["--quota-backend-bytes", str(16 << 30), "--snapshot-count", SNAPSHOT_COUNT]
    if kind == "datastore":
        extra += ["--experimental-snapshot-catchup-entries", SNAPSHOT_COUNT]
    pp = free_port()
    leader = make(base, "a", extra=extra, peer_port=pp,
                  initial_cluster=f"a=http://127.0.0.1:{pp}")
    if source:
        leader.env["PYTHONPATH"] = source
    learner: ServerProc | None = None
    try:
        leader.start()
        opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(leader.endpoint, options=opts) as ch:
            secs = load(rpc_pb2_grpc.KVStub(ch), keys, value_bytes)
        st = status(leader)
        print(f"  {kind}: loaded {keys} keys in {secs:.0f} s, db {st.dbSize >> 20} MB",
              file=sys.stderr, flush=True)
        assert leader.popen is not None
        pid = leader.popen.pid
        rss0, cpu0 = rss_mb(pid), cpu_s(pid)
        lpp = free_port()
        with grpc.insecure_channel(leader.endpoint) as ch:
            rpc_pb2_grpc.ClusterStub(ch).MemberAdd(rpc_pb2.MemberAddRequest(
                peerURLs=[f"http://127.0.0.1:{lpp}"], isLearner=True), timeout=30)
        target = status(leader).raftAppliedIndex
        learner = make(base, "b", extra=extra, peer_port=lpp, state="existing",
                       initial_cluster=f"a=http://127.0.0.1:{pp},b=http://127.0.0.1:{lpp}")
        if source:
            learner.env["PYTHONPATH"] = source
        peak = rss0
        t0 = time.perf_counter()
        learner.launch()
        last_note = t0
        while True:
            peak = max(peak, rss_mb(pid))
            try:
                if status(learner).raftAppliedIndex >= target:
                    break
            except grpc.RpcError:
                pass  # not serving yet
            if learner.popen is not None and learner.popen.poll() is not None:
                raise RuntimeError(f"learner exited:\n{learner.log_tail()}")
            now = time.perf_counter()
            if now - last_note > 10:
                last_note = now
                print(f"  {kind}: catching up, {now - t0:.0f} s, leader RSS peak {peak:.0f} MB",
                      file=sys.stderr, flush=True)
            time.sleep(SAMPLE_S)  # sampling interval (a measurement, not synchronisation)
        took = time.perf_counter() - t0
        if kind == "datastore":
            assert "installed a snapshot" in learner.log_path.read_text(), "no snapshot sent"
        return {"db_mb": st.dbSize / 2**20, "secs": took, "rss0": rss0, "peak": peak,
                "growth": peak - rss0, "cpu": cpu_s(pid) - cpu0}
    finally:
        if learner is not None:
            learner.stop()
        leader.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=1024)
    ap.add_argument("--impl", choices=["both", "etcd", "datastore"], default="both")
    ap.add_argument("--before", help="also run datastore from this source tree (e.g. main)")
    ap.add_argument("--workdir", help="keep data dirs and logs here (default: a temp dir)")
    a = ap.parse_args()
    runs: list[tuple[str, str, str | None]] = []
    if a.impl in ("both", "etcd"):
        runs.append(("etcd 3.4", "etcd", None))
    if a.impl in ("both", "datastore"):
        runs.append(("datastore", "datastore", None))
    if a.before:
        runs.append((f"datastore ({a.before})", "datastore", a.before))
    rows = {}
    for i, (label, kind, source) in enumerate(runs):
        with tempfile.TemporaryDirectory(prefix="bench-snap-") as tmp:
            base = Path(a.workdir) / f"run{i}" if a.workdir else Path(tmp)
            print(f"{label}: {a.keys} keys of {a.value_bytes} B", file=sys.stderr, flush=True)
            rows[label] = run(kind, base, a.keys, a.value_bytes, source)
    print(f"\nLearner catch-up by snapshot, {a.keys} keys of {a.value_bytes} B, one leader:\n")
    print("| server | db MB | catch-up s | leader RSS before MB | peak MB | growth MB "
          "| leader CPU s |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['db_mb']:.0f} | {r['secs']:.1f} | {r['rss0']:.0f} | "
              f"{r['peak']:.0f} | {r['growth']:.0f} | {r['cpu']:.1f} |")
    if "etcd 3.4" in rows and "datastore" in rows:
        e, d = rows["etcd 3.4"], rows["datastore"]
        print(f"\ncatch-up time datastore/etcd: {d['secs'] / e['secs']:.2f}x; "
              f"leader RSS growth datastore {d['growth']:.0f} MB vs etcd {e['growth']:.0f} MB")


if __name__ == "__main__":
    main()
