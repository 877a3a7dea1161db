#!/usr/bin/env python
"""Large lists, side by side: real etcd 3.4 vs datastore, one member each.

Both servers run at once (idle while the other is measured); each gets the same N keys of
1 KiB under ``/registry/pods/`` (loaded with concurrent Txns of many puts), then every
probe runs against each server in turn and the median of ``--repeat`` runs is reported:

- full: one Range over the whole prefix;
- paginated: kube-apiserver's list (limit 500, next page from last key + ``\\x00``,
  every page at the first page's revision);
- count-only and keys-only Ranges over the prefix.

    python scripts/bench_list.py                 # 100k keys, 3 repeats
    python scripts/bench_list.py --keys 20000 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc

PREFIX = b"/registry/pods/"
END = PREFIX[:-1] + bytes([PREFIX[-1] + 1])
OPTS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def load(stub: rpc_pb2_grpc.KVStub, n: int, batch: int = 100, workers: int = 8) -> float:
    """Put n keys of 1 KiB in Txns of ``batch`` puts from ``workers`` threads; seconds taken."""
    value = b"v" * 1024

    def one(start: int) -> None:
        ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
            key=PREFIX + b"ns-%04d/pod-%08d" % (i % 100, i), value=value))
            for i in range(start, min(n, start + batch))]
        stub.Txn(rpc_pb2.TxnRequest(success=ops), timeout=120)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, range(0, n, batch)))
    return time.perf_counter() - t0


def full(stub: rpc_pb2_grpc.KVStub, n: int) -> None:
    r = stub.Range(rpc_pb2.RangeRequest(key=PREFIX, range_end=END), timeout=300)
    assert len(r.kvs) == n, (len(r.kvs), n)


def paginated(stub: rpc_pb2_grpc.KVStub, n: int, limit: int = 500) -> None:
    key, rev, got = PREFIX, 0, 0
    while True:
        r = stub.Range(rpc_pb2.RangeRequest(key=key, range_end=END, limit=limit, revision=rev),
                       timeout=300)
        rev = rev or r.header.revision
        got += len(r.kvs)
        if not r.more:
            break
        key = r.kvs[-1].key + b"\x00"
    assert got == n, (got, n)


def count_only(stub: rpc_pb2_grpc.KVStub, n: int) -> None:
    r = stub.Range(rpc_pb2.RangeRequest(key=PREFIX, range_end=END, count_only=True), timeout=300)
    assert r.count == n and not r.kvs, r.count


def keys_only(stub: rpc_pb2_grpc.KVStub, n: int) -> None:
    r = stub.Range(rpc_pb2.RangeRequest(key=PREFIX, range_end=END, keys_only=True), timeout=300)
    assert len(r.kvs) == n and not r.kvs[0].value, len(r.kvs)


PROBES: dict[str, Callable[[rpc_pb2_grpc.KVStub, int], None]] = {
    "full prefix Range": full,
    "paginated list, limit 500": paginated,
    "count-only Range": count_only,
    "keys-only Range": keys_only,
}


def timed(fn: Callable[[rpc_pb2_grpc.KVStub, int], None], stub: rpc_pb2_grpc.KVStub,
          n: int) -> float:
    t0 = time.perf_counter()
    fn(stub, n)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.keys
    with tempfile.TemporaryDirectory(prefix="bench-list-") as tmp:
        procs: dict[str, ServerProc] = {
            "etcd": etcd_proc(Path(tmp), extra=["--quota-backend-bytes", str(8 << 30)]),
            "datastore": datastore_proc(Path(tmp), extra=["--quota-backend-bytes", str(8 << 30)]),
        }
        try:
            stubs = {}
            for name, p in procs.items():
                p.start()
                ch = grpc.insecure_channel(p.endpoint, options=OPTS)
                stubs[name] = rpc_pb2_grpc.KVStub(ch)
                print(f"{name}: loaded {n} keys in {load(stubs[name], n):.1f} s", file=sys.stderr)
            rows = []
            for probe, fn in PROBES.items():
                times: dict[str, list[float]] = {name: [] for name in stubs}
                for _ in range(args.repeat):
                    for name, stub in stubs.items():  # interleaved: same machine load
                        times[name].append(timed(fn, stub, n))
                med = {name: statistics.median(t) for name, t in times.items()}
                # ratio of speeds (etcd time / datastore time): >1 means datastore is faster
                rows.append((probe, med["etcd"], med["datastore"], med["etcd"] / med["datastore"]))
                print(f"{probe}: {med}", file=sys.stderr)
        finally:
            for p in procs.values():
                p.stop()
    print(f"\n{n} keys of 1 KiB under {PREFIX.decode()}, median of {args.repeat} runs\n")
    print("| probe | real etcd 3.4 | datastore | datastore / etcd (speed) |")
    print("|---|---|---|---|")
    for probe, e, d, ratio in rows:
        print(f"| {probe} | {e:.3f} s | {d:.3f} s | {ratio:.2f} |")


if __name__ == "__main__":
    main()
