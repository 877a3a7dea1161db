"""/metrics of one member: promtool, etcd's families, counters that match a known load,
``--metrics basic|extensive``, and bad scrape requests.

Real etcd 3.4 is the oracle for names, types and label names; ``promtool check metrics``
(Debian's prometheus package) for the format.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import ETCDCTL_BIN, ServerProc, datastore_proc, etcd_proc, etcdctl, free_port
from e2e.metrics_util import (
    families,
    finding_names,
    http_get,
    needs_promtool,
    open_streams,
    promtool_findings,
    raw_request,
    scrape,
    value,
)

# Families etcd 3.4 has and a datastore member has no counterpart for: the v2 store, the
# gRPC proxy's (a separate `datastore grpc-proxy` here), bbolt's commit phases, Go's runtime,
# and snapshot/compaction/hash internals measured differently here.
NOT_EXPORTED_PREFIXES = ("go_", "promhttp_", "etcd_debugging_store_", "etcd_grpc_proxy_",
                         "etcd_debugging_disk_backend_commit_", "etcd_debugging_snap_",
                         "etcd_snap_", "etcd_debugging_mvcc_db_compaction_",
                         "etcd_debugging_mvcc_index_compaction_", "etcd_mvcc_hash_",
                         "etcd_debugging_auth_", "etcd_server_health_", "etcd_server_go_version",
                         "etcd_server_learner_promote_",
                         "etcd_debugging_mvcc_db_total_size", "etcd_debugging_mvcc_pending_events",
                         "etcd_disk_wal_write_bytes", "etcd_mvcc_db_open_read_transactions")


def member(tmp_path: Path, started: list[ServerProc], *extra: str, kind: str = "datastore",
           ) -> tuple[ServerProc, str]:
    port = free_port()
    make = datastore_proc if kind == "datastore" else etcd_proc
    p = make(tmp_path, name=f"{kind}0", extra=[f"--listen-metrics-urls=http://127.0.0.1:{port}",
                                               *extra])
    started.append(p)
    p.start()
    return p, f"http://127.0.0.1:{port}"


def some_load(p: ServerProc) -> None:
    """Every kind of call the histograms and counters see, streams included."""
    with p.channel() as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(5):
            kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v"), timeout=10)
        kv.Range(pb.RangeRequest(key=b"k", range_end=b"l"), timeout=10)
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"k0"), timeout=10)
        kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"1")),
                                      pb.RequestOp(request_range=pb.RangeRequest(key=b"t"))]),
               timeout=10)
        open_streams(ch).close()
        rpc_pb2_grpc.MaintenanceStub(ch).Defragment(pb.DefragmentRequest(), timeout=60)


@needs_promtool
def test_promtool_and_etcd_families(tmp_path: Path, started: list[ServerProc]) -> None:
    ds, ds_base = member(tmp_path, started, "--metrics=extensive")
    etcd, etcd_base = member(tmp_path, started, "--metrics=extensive", kind="etcd")
    for p in (ds, etcd):
        some_load(p)
    ours, theirs = scrape(ds_base), scrape(etcd_base)

    # promtool: no parse error; its lint findings only where etcd itself has them (etcd's
    # gauges named *_total, kept so that dashboards work unchanged)
    our_findings, etcd_findings = promtool_findings(ours), promtool_findings(theirs)
    assert our_findings <= etcd_findings, our_findings - etcd_findings

    # every etcd family we export has etcd's type and label names
    mine, etcds = families(ours), families(theirs)
    missing = sorted(n for n in etcds if n not in mine and not n.startswith(NOT_EXPORTED_PREFIXES))
    assert not missing, missing
    for name, (typ, ss) in etcds.items():
        if name not in mine or not ss:
            continue
        my_typ, my_ss = mine[name]
        assert my_typ == typ, (name, my_typ, typ)
        want = {frozenset(s.labels) for s in ss}
        assert {frozenset(s.labels) for s in my_ss} == want, name
        if typ == "histogram":  # etcd's buckets
            buckets = {s.labels["le"] for s in ss if s.name.endswith("_bucket")}
            assert {s.labels["le"] for s in my_ss if s.name.endswith("_bucket")} == buckets, name
    assert "process_resident_memory_bytes" in mine and "process_cpu_seconds" in mine
    assert finding_names(our_findings) == finding_names(our_findings & etcd_findings)


def test_counters_match_a_known_load(tmp_path: Path, started: list[ServerProc]) -> None:
    n = 40
    p, base = member(tmp_path, started, "--metrics=extensive")
    before = scrape(base)
    put = {"grpc_method": "Put", "grpc_service": "etcdserverpb.KV", "grpc_type": "unary"}
    watch = {"grpc_method": "Watch", "grpc_service": "etcdserverpb.Watch", "grpc_type": "bidi_stream"}
    keep = {"grpc_method": "LeaseKeepAlive", "grpc_service": "etcdserverpb.Lease",
            "grpc_type": "bidi_stream"}
    assert value(before, "grpc_server_handled_total", grpc_code="OK", **put) == 0
    fsyncs = value(before, "etcd_disk_wal_fsync_duration_seconds_count")
    with p.channel() as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(n):
            kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v" * 10), timeout=10)
        with pytest.raises(grpc.RpcError) as e:  # a future revision: OutOfRange
            kv.Range(pb.RangeRequest(key=b"k", revision=10**6), timeout=10)
        assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
        streams = open_streams(ch)
        during = scrape(base)
        streams.close()
    assert value(during, "grpc_server_handled_total", grpc_code="OK", **put) == n
    assert value(during, "grpc_server_started_total", **put) == n
    assert value(during, "grpc_server_handling_seconds_count", **put) == n
    assert value(during, "grpc_server_handled_total", grpc_code="OutOfRange", grpc_method="Range") == 1
    assert value(during, "etcd_mvcc_put_total") == n
    assert value(during, "etcd_disk_wal_fsync_duration_seconds_count") > fsyncs
    assert value(during, "etcd_network_client_grpc_received_bytes_total") >= n * 10
    # the mixin's "Watch streams" / "Lease streams": started - handled of the bidi streams
    for labels in (watch, keep):
        open_ = (value(during, "grpc_server_started_total", **labels)
                 - sum(value(during, "grpc_server_handled_total", grpc_code=c, **labels)
                       for c in ("OK", "Canceled", "Unknown")))
        assert open_ == 1, labels
    assert value(during, "etcd_debugging_mvcc_watch_stream_total") == 1
    assert value(during, "etcd_debugging_mvcc_watcher_total") == 1
    assert value(during, "etcd_debugging_lease_granted_total") == 1


@pytest.mark.skipif(not Path(ETCDCTL_BIN).exists(), reason="etcdctl not installed")
def test_client_requests_by_api_version(tmp_path: Path, started: list[ServerProc]) -> None:
    """etcd's interceptors count each call as unary or stream, by the client-api-version
    metadata etcd's clients send ("unknown" without it)."""
    p, base = member(tmp_path, started)
    name = "etcd_server_client_requests_total"
    unknown_before = value(scrape(base), name, type="unary", client_api_version="unknown")  # start-up probes
    with p.channel() as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(3):
            kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v"), timeout=10)
        for _ in range(2):
            kv.Range(pb.RangeRequest(key=b"k0"), timeout=10, metadata=(("client-api-version", "3.6"),))
        open_streams(ch).close()  # a LeaseGrant, then a Watch and a LeaseKeepAlive stream
    etcdctl(p.endpoint, "put", "ctl", "1")
    text = scrape(base)
    assert value(text, name, type="unary", client_api_version="unknown") == unknown_before + 4
    assert value(text, name, type="stream", client_api_version="unknown") == 2
    assert value(text, name, type="unary", client_api_version="3.6") == 2
    assert value(text, name, type="unary", client_api_version="3.4") == 1  # one Put (as etcd 3.6 counts it)
    assert families(text)["etcd_server_client_requests"][0] == "counter"


def test_basic_has_no_handling_histogram(tmp_path: Path, started: list[ServerProc]) -> None:
    _, base = member(tmp_path, started)  # --metrics basic is the default, as etcd's
    fams = families(scrape(base))
    assert "grpc_server_handled" in fams and "grpc_server_handling_seconds" not in fams


def test_bad_scrape_requests(tmp_path: Path, started: list[ServerProc]) -> None:
    p, base = member(tmp_path, started)
    assert http_get(base + "/metrics/x")[0] == 404
    assert http_get(base + "/metricsx")[0] == 404
    assert http_get(base + "/metrics?x=%zz&name[]=a")[0] == 200  # etcd ignores the query
    code, body = http_get(base + "/metrics", method="POST")
    assert code in (404, 405) and "Traceback" not in body
    port = int(base.rsplit(":", 1)[1])
    for garbage in (b"\x16\x03\x01garbage\r\n\r\n", b"GET /metrics\r\n\r\n",
                    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"):
        assert raw_request(port, garbage).startswith(b"HTTP/1.1 400 "), garbage
    assert raw_request(port, b"GET /metrics/%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                       ).startswith(b"HTTP/1.1 404 ")
    assert "Traceback" not in p.log_tail(200)


def test_unknown_metrics_level_is_refused(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "datastore", "serve", "--data-dir", str(tmp_path / "d"),
                        "--metrics=full"], capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode != 0 and "--metrics: invalid choice: 'full'" in err and "'extensive'" in err, err
    assert "Traceback" not in err
