"""Smoke test of ``datastore.bench`` against a real etcd: the summary is well-formed.

No performance assertions: only that the requests were made and the numbers are sane.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from datastore.api.etcdserverpb import rpc_pb2
from datastore.bench import BenchConfig, Histogram, run_bench
from datastore.bench.core import KeyGen, prefix_end
from datastore.testing.procs import ETCD_BIN, ServerProc, etcd_proc

pytestmark = pytest.mark.timeout(60)

needs_etcd = pytest.mark.skipif(not os.path.exists(ETCD_BIN), reason="real etcd not installed")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    proc = etcd_proc(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield proc
    finally:
        proc.stop()


def _check_summary(s: dict, workload: str, total: int) -> None:
    assert s["workload"] == workload
    assert s["errors"] == 0, s["error_codes"]
    assert s["ops"] == total
    assert s["elapsed_s"] > 0
    assert s["ops_per_s"] > 0
    lat = s["latency_ms"]
    assert set(lat) >= {"p50", "p90", "p99", "max", "mean", "min"}
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert s["client_cpu_s"] >= 0


@needs_etcd
def test_cli_json_put(etcd: ServerProc) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "datastore.bench", "--endpoints", etcd.endpoint, "--workload",
         "put", "--total", "200", "--clients", "8", "--conns", "2", "--json"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.returncode == 0, out.stderr
    _check_summary(json.loads(out.stdout), "put", 200)


@needs_etcd
@pytest.mark.parametrize("workload", ["get", "get-serializable", "txn"])
def test_workloads(etcd: ServerProc, workload: str) -> None:
    cfg = BenchConfig(endpoints=[etcd.endpoint], workload=workload, clients=8, conns=2,
                      duration=None, total=150, key_space=50, progress="none")
    s = run_bench(cfg)
    _check_summary(s, workload, 150)
    if workload.startswith("get"):
        assert s["prepopulated_keys"] == 50
    if workload == "txn":
        assert s["txn"]["succeeded"] + s["txn"]["conflicts"] == 150
        assert s["txn"]["succeeded"] > 0


@needs_etcd
def test_watch(etcd: ServerProc) -> None:
    cfg = BenchConfig(endpoints=[etcd.endpoint], workload="watch", clients=4, conns=2,
                      duration=None, total=20, watchers=3, rate=200.0, progress="none")
    s = run_bench(cfg)
    w = s["watch"]
    assert w["watchers"] == 3 and w["writes"] == 20
    assert w["events_expected"] == 60
    assert 0 < w["events"] <= 60
    assert s["latency_ms"]["max"] > 0


def test_request_encoding_matches_protobuf() -> None:
    import random

    kg = KeyGen(b"bench/", 16, 1000, 10, random.Random(1))
    assert len(kg.key(7)) == 16
    put = rpc_pb2.PutRequest.FromString(kg.put_req(7))
    assert put.key == kg.key(7) and put.value == kg.value
    rng = rpc_pb2.RangeRequest.FromString(kg.range_req(3, True))
    assert rng.key == kg.key(3) and rng.serializable
    assert not rpc_pb2.RangeRequest.FromString(kg.range_req(3, False)).serializable
    assert prefix_end(b"a/") == b"a0" and prefix_end(b"a\xff") == b"b"


def test_histogram_percentiles() -> None:
    h = Histogram()
    for us in range(1, 100001):
        h.record(us)
    assert h.count == 100000 and h.max == 100000 and h.min == 1
    for q in (50, 90, 99):
        assert abs(h.percentile(q) - q * 1000) / (q * 1000) < 0.01
    other = Histogram.from_dict(h.to_dict())
    other.merge(h)
    assert other.count == 200000 and abs(other.percentile(50) - 50000) < 500


@pytest.mark.parametrize("mode", ["servicer", "raw"])
def test_noop_server_answers_every_workload(tmp_path: Path, mode: str) -> None:
    """The do-nothing servicer (bench_compare's third column) serves the bench's loads."""
    from datastore.bench.noop_server import noop_proc

    proc = noop_proc(tmp_path, mode=mode).start()
    try:
        for workload in ("put", "get", "txn"):
            cfg = BenchConfig(endpoints=[proc.endpoint], workload=workload, clients=4, conns=1,
                              duration=None, total=40, key_space=10, progress="none")
            _check_summary(run_bench(cfg), workload, 40)
    finally:
        proc.stop()


def _bench_compare() -> object:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_compare.py"
    spec = importlib.util.spec_from_file_location("bench_compare", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_table_ratios_to_etcd_and_noop() -> None:
    bc = _bench_compare()
    ld = ("put", 16)

    def r(ops: float, p99: float, cpu: float | None = 100.0) -> dict:
        return {ld: {"ops": ops, "ops_per_s": ops, "latency_ms": {"p99": p99}, "errors": 0,
                     "server_cpu_us_per_op": cpu}}

    kinds = ["etcd", "etcd36", "kine", "datastore", "noop", "noop-raw"]
    res = [r(4000, 2), r(3000, 2), r(0, 0, None), r(1000, 4, 250.0), r(2000, 1), r(5000, 1)]
    table = bc.markdown_table(kinds, [ld], res, kinds)  # type: ignore[attr-defined]
    head, _, row = table.splitlines()
    cols = dict(zip([c.strip() for c in head.strip("|").split("|")],
                    [c.strip() for c in row.strip("|").split("|")], strict=True))
    assert cols["noop ops/s"] == "2,000" and cols["noop-raw ops/s"] == "5,000"
    assert cols["ops/s datastore/etcd"] == "0.25" and cols["p99 datastore/etcd"] == "2.00"
    assert cols["ops/s datastore/etcd36"] == "0.33"
    assert cols["ops/s datastore/noop"] == "0.50"
    assert cols["ops/s datastore/noop-raw"] == "0.20"
    assert cols["datastore cpu µs/op"] == "250" and cols["etcd cpu µs/op"] == "100"
    # a target that served nothing (kine refusing a load): n/a, never a ratio or a p99 of 0
    assert cols["kine p99 ms"] == "n/a" and cols["kine cpu µs/op"] == "n/a"
    assert cols["ops/s datastore/kine"] == "n/a"


def test_compare_cli_noop_only(tmp_path: Path) -> None:
    """A whole bench_compare run, cheap: two noop servers, one short load."""
    out = tmp_path / "bench.md"
    rc = _bench_compare().main([  # type: ignore[attr-defined]
        "--target", "noop,noop-raw", "--workloads", "put", "--clients", "4",
        "--duration", "0.3", "--warmup", "0", "--out", str(out), "-q"])
    assert rc == 0
    text = out.read_text()
    assert "ops/s noop-raw/noop" in text and "| put | 4 |" in text
    assert "noop cpu µs/op" in text and "noop-raw cpu µs/op" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| put | 4 |"))
    assert "n/a" not in row  # both served: a rate, a p99 and a CPU per request each


def test_bench_core_writes_through_the_member_without_grpc(tmp_path: Path) -> None:
    """scripts/bench_core.py drives a real in-process member; the writes must have
    happened (a positive rate and CPU per write), or its numbers mean nothing."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_core.py"
    out = subprocess.run([sys.executable, str(script), "--clients", "8", "--duration", "0.5"],
                         capture_output=True, text=True, timeout=50, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("core only (no gRPC): "), line
    rate = float(line.split(": ")[1].split(" writes/s")[0].replace(",", ""))
    assert rate > 0
