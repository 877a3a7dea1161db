"""The JSON gateway (etcd's grpc-gateway) with clients no one here wrote, and vs etcd 3.4.

- ``curl`` sequences from etcd's gateway documentation (Documentation/dev-guide/
  api_grpc_gateway.md): put, range, watch, txn, auth-less lease calls;
- the PyPI client ``etcd3gw``: put, get, prefix get, delete, lease, watch, lock;
- differential: the same JSON requests on real etcd 3.4's client port and on datastore's
  ``--listen-client-http-urls``; status and bodies compared after dropping the ids that
  differ by nature (cluster/member ids, raft term, lease ids).
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc, free_port

CURL = shutil.which("curl")


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def post(base: str, path: str, body: Any = None, raw: bytes | None = None,
         headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        text, status = e.read().decode(), e.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def watchers(base: str) -> int:
    """The member's watcher gauge (/metrics is served on the gateway's port too)."""
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
    raise KeyError("etcd_debugging_mvcc_watcher_total")


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, str]]:
    port = free_port()
    p = datastore_proc(tmp_path_factory.mktemp("gw"), name="gw0",
                       extra=[f"--listen-client-http-urls=http://127.0.0.1:{port}"])
    p.start()
    yield p, f"http://127.0.0.1:{port}"
    p.stop()


def test_curl_sequence_from_etcd_docs(ds: tuple[ServerProc, str]) -> None:
    """The documented curl calls, verbatim apart from the address."""
    assert CURL, "curl is needed (apt-get install curl)"
    _, base = ds

    def curl(path: str, body: str) -> dict[str, Any]:
        out = subprocess.run([CURL, "-sS", "-L", f"{base}{path}", "-X", "POST", "-d", body],
                             capture_output=True, timeout=30, check=True).stdout
        return json.loads(out)

    r = curl("/v3/kv/put", '{"key": "Zm9v", "value": "YmFy"}')
    rev = int(r["header"]["revision"])
    r = curl("/v3/kv/range", '{"key": "Zm9v"}')
    assert r["kvs"][0]["value"] == "YmFy" and r["count"] == "1"
    # prefix range, as the doc shows with range_end "Zm9w" ("foo" + 1)
    r = curl("/v3/kv/range", '{"key": "Zm9v", "range_end": "Zm9w"}')
    assert [kv["key"] for kv in r["kvs"]] == ["Zm9v"]
    # txn: compare the create revision, put on success
    r = curl("/v3/kv/txn", json.dumps({
        "compare": [{"target": "CREATE", "key": "Zm9v", "createRevision": str(rev)}],
        "success": [{"requestPut": {"key": "Zm9v", "value": "YmFy"}}]}))
    assert r["succeeded"] is True
    # watch: a streamed response, one {"result": ...} per line
    w = subprocess.Popen([CURL, "-sS", "-N", f"{base}/v3/watch", "-X", "POST", "-d",
                          '{"create_request": {"key":"Zm9v"}}'], stdout=subprocess.PIPE)
    assert w.stdout is not None
    try:
        created = json.loads(w.stdout.readline())
        assert created["result"]["created"] is True
        curl("/v3/kv/put", '{"key": "Zm9v", "value": "YmF6"}')
        ev = json.loads(w.stdout.readline())["result"]["events"][0]
        assert ev["kv"]["value"] == "YmF6"
        assert watchers(base) == 1
    finally:
        w.kill()
        w.wait()
    # the client went away: so does its watch on the member
    deadline = time.monotonic() + 60
    while watchers(base) != 0:
        assert time.monotonic() < deadline, "the gateway leaked a watch"
        time.sleep(0.05)  # poll interval of the condition above
    # lease grant / keepalive / timetolive / revoke
    r = curl("/v3/lease/grant", '{"TTL": 30}')
    lid = r["ID"]
    r = curl("/v3/lease/keepalive", json.dumps({"ID": lid}))
    assert r["result"]["TTL"] == "30"
    r = curl("/v3/kv/lease/timetolive", json.dumps({"ID": lid}))
    assert r["grantedTTL"] == "30"
    curl("/v3/lease/revoke", json.dumps({"ID": lid}))
    # the deprecated prefixes older clients use, and /version on the same port
    assert curl("/v3beta/kv/range", '{"key": "Zm9v"}')["count"] == "1"
    assert curl("/v3alpha/kv/range", '{"key": "Zm9v"}')["count"] == "1"
    ver = json.loads(subprocess.run([CURL, "-sS", f"{base}/version"], capture_output=True,
                                    check=True).stdout)
    assert ver["etcdserver"].startswith("3.")


def test_etcd3gw_client(ds: tuple[ServerProc, str]) -> None:
    import etcd3gw  # a declared test dependency
    _, base = ds
    port = int(base.rsplit(":", 1)[1])
    c = etcd3gw.Etcd3Client(host="127.0.0.1", port=port, timeout=30)
    assert c.put("/gw3/a", "1") is True
    assert c.put("/gw3/b", "2") is True
    assert c.get("/gw3/a") == [b"1"]
    assert sorted(v for v, _ in c.get_prefix("/gw3/")) == [b"1", b"2"]
    assert c.delete("/gw3/b") is True
    assert c.get("/gw3/b") == []
    assert c.create("/gw3/a", "again") is False  # exists: the txn fails
    assert c.replace("/gw3/a", "1", "3") is True
    # lease
    lease = c.lease(ttl=30)
    assert c.put("/gw3/leased", "x", lease=lease)
    assert 0 < lease.ttl() <= 30
    assert lease.refresh() == 30
    assert lease.keys() == [b"/gw3/leased"]
    assert lease.revoke() is True
    assert c.get("/gw3/leased") == []
    # watch: every event, in order
    events, cancel = c.watch("/gw3/w")
    got: queue.Queue[Any] = queue.Queue()

    def drain() -> None:
        for ev in events:
            got.put(ev)
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        for i in range(5):
            c.put("/gw3/w", str(i))
        values = [got.get(timeout=30)["kv"]["value"] for _ in range(5)]
        assert values == [str(i).encode() for i in range(5)]
    finally:
        cancel()
    # lock: etcd3gw's own txn-based lock
    lock = c.lock("gw3-lock", ttl=30)
    assert lock.acquire() is True
    assert lock.is_acquired()
    other = c.lock("gw3-lock", ttl=30)
    assert other.acquire() is False
    assert lock.release() is True
    assert other.acquire() is True and other.release() is True
    # the status and member calls it offers
    assert c.status()["version"]
    assert len(c.members()) == 1


def test_errors_and_token(ds: tuple[ServerProc, str]) -> None:
    _, base = ds
    assert post(base, "/v3/kv/range", {"key": ""}) == (400, {
        "error": "etcdserver: key is not provided", "message": "etcdserver: key is not provided",
        "code": 3})
    status, body = post(base, "/v3/kv/range", raw=b"not json")
    assert status == 400 and body["code"] == 3
    assert post(base, "/v3/kv/nope", {})[0] == 404
    assert post(base, "/v3/kv/range", method="GET")[0] == 405
    status, body = post(base, "/v3/lease/timetolive", {"ID": 12345})
    assert status == 200 and body["TTL"] == "-1"
    status, body = post(base, "/v3/lease/revoke", {"ID": 12345})
    assert (status, body["code"]) == (404, 5)
    # auth is off: a token header is passed on as the token metadata and ignored, as by etcd
    assert post(base, "/v3/kv/range", {"key": b64("x")},
                headers={"Authorization": "whatever"})[0] == 200
    # a watch on the metrics-less port still leaves /health there
    status, body = post(base, "/health", method="GET")
    assert status == 200 and body["health"] == "true"


# ---- differential against etcd 3.4 ----------------------------------------------------
SEQUENCE: list[tuple[str, Any]] = [
    ("/v3/kv/put", {"key": b64("d/a"), "value": b64("1")}),
    ("/v3/kv/put", {"key": b64("d/b"), "value": b64("2"), "prev_kv": True}),
    ("/v3/kv/put", {"key": b64("d/b"), "value": b64("3"), "prev_kv": True}),
    ("/v3/kv/range", {"key": b64("d/"), "range_end": b64("d0")}),
    ("/v3/kv/range", {"key": b64("d/"), "range_end": b64("d0"), "keys_only": True,
                      "sort_order": "DESCEND", "sort_target": "KEY"}),
    ("/v3/kv/range", {"key": b64("d/"), "range_end": b64("d0"), "count_only": True}),
    ("/v3/kv/range", {"key": b64("d/"), "range_end": b64("d0"), "limit": "1"}),
    ("/v3/kv/range", {"key": b64("d/a"), "revision": "100"}),
    ("/v3/kv/range", {"key": b64("d/a"), "serializable": True, "unknown_field": 1}),
    ("/v3/kv/range", {"key": ""}),
    # bytes are strict standard base64, as Go decodes them (not silently trimmed)
    ("/v3/kv/range", {"key": "!!!"}),
    ("/v3/kv/range", {"key": "Zm9vYg"}),
    ("/v3/kv/range", {"key": "Zg="}),
    ("/v3/kv/range", {"key": "Zm9v\n"}),
    ("/v3/kv/txn", {"compare": [{"key": "Zm-v", "target": "VALUE", "value": "eA=="}]}),
    ("/v3/kv/txn", {"compare": [{"key": b64("d/a"), "result": "EQUAL", "target": "VALUE",
                                 "value": b64("1")}],
                    "success": [{"request_put": {"key": b64("d/c"), "value": b64("4")}},
                                {"request_range": {"key": b64("d/c")}}],
                    "failure": [{"request_delete_range": {"key": b64("d/a")}}]}),
    ("/v3/kv/txn", {"compare": [{"key": b64("d/a"), "result": "GREATER", "target": "MOD",
                                 "mod_revision": "100"}],
                    "failure": [{"request_delete_range": {"key": b64("d/a"), "prev_kv": True}}]}),
    ("/v3/kv/deleterange", {"key": b64("d/"), "range_end": b64("d0"), "prev_kv": True}),
    ("/v3/kv/deleterange", {"key": b64("nothing")}),
    ("/v3/kv/put", {"key": b64("d/z"), "value": b64("z"), "lease": "999"}),
    ("/v3/kv/put", {"key": b64("d/z"), "ignore_value": True}),
    ("/v3/kv/compaction", {"revision": "1000"}),
    ("/v3/kv/compaction", {"revision": "3"}),
    ("/v3/kv/range", {"key": b64("d/a"), "revision": "2"}),
    ("/v3/lease/grant", {"TTL": "60", "ID": "777"}),
    ("/v3/lease/grant", {"TTL": "60", "ID": "777"}),
    ("/v3/lease/timetolive", {"ID": "777", "keys": True}),
    ("/v3/kv/put", {"key": b64("d/l"), "value": b64("l"), "lease": "777"}),
    ("/v3/kv/lease/timetolive", {"ID": "777", "keys": True}),
    ("/v3/lease/leases", {}),
    ("/v3/lease/revoke", {"ID": "777"}),
    ("/v3/lease/revoke", {"ID": "777"}),
    ("/v3/kv/range", {"key": b64("d/l")}),
    ("/v3/maintenance/alarm", {"action": "GET"}),
    ("/v3/auth/authenticate", {"name": "root", "password": "x"}),
    ("/v3/kv/nope", {}),
    ("/v3beta/kv/range", {"key": b64("d/z")}),
]
_IDS = ("cluster_id", "member_id", "raft_term")


def normalise(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: normalise(v) for k, v in body.items() if k not in _IDS}
    if isinstance(body, list):
        return [normalise(v) for v in body]
    return body


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    e = etcd_proc(tmp_path, "etcdgw")
    d = datastore_proc(tmp_path, "dsgw", extra=[f"--listen-client-http-urls=http://127.0.0.1:{port}"])
    e.launch()
    d.launch()
    try:
        e.wait_ready()
        d.wait_ready()
        yield f"http://127.0.0.1:{e.client_port}", f"http://127.0.0.1:{port}"
    finally:
        e.stop()
        d.stop()


def test_differential_vs_etcd(pair: tuple[str, str]) -> None:
    etcd, ds = pair
    diffs = []
    for path, body in SEQUENCE:
        a, b = post(etcd, path, body), post(ds, path, body)
        a, b = (a[0], normalise(a[1])), (b[0], normalise(b[1]))
        if path == "/v3/maintenance/alarm":  # etcd 3.4 leaves the header out of an alarm GET
            a[1].pop("header", None)
            b[1].pop("header", None)
        if a != b:
            diffs.append((path, body, a, b))
    assert not diffs, "\n".join(f"{p} {q}\n  etcd: {a}\n  ours: {b}" for p, q, a, b in diffs)


def test_watch_stream_matches_etcd(pair: tuple[str, str]) -> None:
    """A watch from revision 1 over a few writes: the same stream of results."""
    outs = []
    for base in pair:
        for i in range(3):
            post(base, "/v3/kv/put", {"key": b64("w"), "value": b64(str(i))})
        post(base, "/v3/kv/deleterange", {"key": b64("w")})
        req = urllib.request.Request(base + "/v3/watch", method="POST", data=json.dumps(
            {"create_request": {"key": b64("w"), "start_revision": "1", "prev_kv": True}}).encode())
        with urllib.request.urlopen(req, timeout=30) as r:
            lines = [json.loads(r.readline()) for _ in range(2)]
        outs.append(normalise(lines))
    assert outs[0] == outs[1]
    assert len(outs[1][1]["result"]["events"]) == 4
