"""/livez and /readyz on --listen-metrics-urls, with etcd 3.5's checks, codes and bodies.

etcd 3.4 (the oracle installed here) has no /livez or /readyz, so the expected bodies come
from etcd 3.5's server/etcdserver/api/etcdhttp/health.go: checks ``serializable_read``
(livez) and ``data_corruption``, ``serializable_read``, ``linearizable_read`` (readyz),
``[+]name ok`` / ``[-]name failed: reason`` lines, 503 with the lines (plus the newline
Go's http.Error adds) on failure, ``ok`` (after the lines with ``?verbose``) on success.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import ServerProc, datastore_proc, free_port

READY_VERBOSE = "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n"


def get(base: str, path: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(base + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def status_body(base: str, path: str) -> tuple[int, str]:
    code, body, _ = get(base, path)
    return code, body


def with_metrics(tmp_path: Path, started: list[ServerProc], *extra: str,
                 **kw: object) -> tuple[ServerProc, str]:
    port = free_port()
    p = datastore_proc(tmp_path, name="m0",
                       extra=[f"--listen-metrics-urls=http://127.0.0.1:{port}", *extra], **kw)
    started.append(p)
    return p, f"http://127.0.0.1:{port}"


def test_livez_readyz_healthy(tmp_path: Path, started: list[ServerProc]) -> None:
    p, base = with_metrics(tmp_path, started)
    p.start()
    code, body, headers = get(base, "/livez")
    assert (code, body) == (200, "ok\n")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert status_body(base, "/readyz") == (200, "ok\n")
    assert status_body(base, "/readyz?verbose") == (200, READY_VERBOSE)
    assert status_body(base, "/livez?verbose=1") == (200, "[+]serializable_read ok\nok\n")
    # exclusions (repeatable); a name etcd does not know is ignored, not an error
    assert status_body(base, "/readyz?verbose&exclude=serializable_read&exclude=nope") == (
        200, "[+]data_corruption ok\n[+]linearizable_read ok\nok\n")
    # one check by its sub-path
    assert status_body(base, "/readyz/linearizable_read?verbose") == (
        200, "[+]linearizable_read ok\nok\n")
    assert status_body(base, "/livez/serializable_read") == (200, "ok\n")
    assert status_body(base, "/readyz/nope")[0] == 404
    assert status_body(base, "/livez/linearizable_read")[0] == 404  # not a livez check
    code, body, headers = get(base, "/readyz", method="POST")
    assert (code, body, headers["Allow"]) == (405, "Method Not Allowed\n", "GET")
    assert status_body(base, "/health") == (200, json.dumps({"health": "true", "reason": ""}))


def test_alarms_nospace_and_corrupt(tmp_path: Path, started: list[ServerProc]) -> None:
    """NOSPACE (a real one, from a small quota) fails /health but, as in etcd 3.5, neither
    /livez nor /readyz; CORRUPT fails /readyz's data_corruption check."""
    p, base = with_metrics(tmp_path, started, "--quota-backend-bytes=300000")
    p.start()
    with grpc.insecure_channel(p.endpoint) as ch:
        kv, maint = rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.MaintenanceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            for i in range(1000):
                kv.Put(pb.PutRequest(key=b"fill/%d" % i, value=b"x" * 4096), timeout=10)
        assert err.value.details() == "etcdserver: mvcc: database space exceeded"
        assert [a.alarm for a in maint.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET)).alarms] \
            == [pb.NOSPACE]
        assert status_body(base, "/health") == (
            503, json.dumps({"health": "false", "reason": "ALARM NOSPACE"}))
        assert status_body(base, "/health?exclude=NOSPACE")[0] == 200
        assert status_body(base, "/livez") == (200, "ok\n")
        assert status_body(base, "/readyz?verbose") == (200, READY_VERBOSE)

        maint.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.CORRUPT,
                                    memberID=1))
        assert status_body(base, "/readyz") == (503, (
            "[-]data_corruption failed: alarm activated: CORRUPT\n"
            "[+]serializable_read ok\n[+]linearizable_read ok\n\n"))
        assert status_body(base, "/readyz/data_corruption")[0] == 503
        assert status_body(base, "/readyz?exclude=data_corruption") == (200, "ok\n")
        assert status_body(base, "/livez") == (200, "ok\n")
        # disarmed: ready again
        for alarm in (pb.CORRUPT, pb.NOSPACE):
            maint.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, alarm=alarm,
                                        memberID=1 if alarm == pb.CORRUPT else 0))
    assert status_body(base, "/readyz") == (200, "ok\n")


def test_readyz_without_a_leader(tmp_path: Path, started: list[ServerProc]) -> None:
    """One member of a two-member cluster whose peer never starts: it is live, not ready."""
    peer = f"http://127.0.0.1:{free_port()}"
    pp = free_port()
    p, base = with_metrics(tmp_path, started, "--heartbeat-interval=10", "--election-timeout=50",
                           peer_port=pp,
                           initial_cluster=f"m0=http://127.0.0.1:{pp},absent={peer}")
    p.start()  # Status answers without a leader
    code, body = status_body(base, "/livez")
    assert (code, body) == (200, "ok\n")
    assert status_body(base, "/health") == (
        503, json.dumps({"health": "false", "reason": "RAFT NO LEADER"}))
    assert status_body(base, "/health?serializable=true")[0] == 200
    # the linearizable read waits for etcd's request timeout, then fails
    assert status_body(base, "/readyz") == (503, (
        "[+]data_corruption ok\n[+]serializable_read ok\n"
        "[-]linearizable_read failed: etcdserver: request timed out\n\n"))
    assert status_body(base, "/readyz?exclude=linearizable_read") == (200, "ok\n")
