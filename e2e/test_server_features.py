"""Server behaviours the differential tests cannot pin down: quotas, lease expiry and
restart, automatic compaction, snapshot restore, clean shutdown, slow watchers.

Each test waits on conditions with deadlines; none sleeps to synchronise.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.mvccpb import kv_pb2
from datastore.testing.procs import ServerProc, datastore_proc
from e2e.e2e_util import Client, ctl, ctl_out, target_is_etcd

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="datastore-specific behaviour")


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # poll interval of the condition


@pytest.fixture
def ds(tmp_path: Path) -> Iterator[Callable[..., ServerProc]]:
    procs: list[ServerProc] = []

    def make(*extra: str, name: str = "node0") -> ServerProc:
        p = datastore_proc(tmp_path, name=name, extra=list(extra))
        procs.append(p.start())
        return p

    yield make
    for p in procs:
        p.stop()


def test_quota_nospace_alarm_and_recovery(ds: Callable[..., ServerProc]) -> None:
    p = ds("--quota-backend-bytes=2000000")
    with Client(p) as c:
        big = b"x" * 100_000
        err = None
        for i in range(200):
            try:
                c.kv.Put(pb.PutRequest(key=b"k%03d" % i, value=big))
            except grpc.RpcError as e:
                err = e
                break
        assert err is not None, "quota never triggered"
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == "etcdserver: mvcc: database space exceeded"
        assert "NOSPACE" in ctl_out(p, "alarm", "list")
        # reads still work, writes keep failing, nothing acknowledged was lost
        n = c.kv.Range(pb.RangeRequest(key=b"k", range_end=b"l", count_only=True)).count
        assert n == i
        with pytest.raises(grpc.RpcError) as ei:
            c.kv.Put(pb.PutRequest(key=b"small", value=b"v"))
        assert ei.value.details() == "etcdserver: mvcc: database space exceeded"
        # free space the etcd way: delete, compact, defrag, disarm
        rev = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"k", range_end=b"l")).header.revision
        c.kv.Compact(pb.CompactionRequest(revision=rev, physical=True))
        ctl(p, "defrag")
        ctl(p, "alarm", "disarm")
        assert ctl_out(p, "alarm", "list") == ""
        c.kv.Put(pb.PutRequest(key=b"small", value=b"v"))
        assert c.kv.Range(pb.RangeRequest(key=b"small")).kvs[0].value == b"v"


def test_lease_expiry_deletes_keys_and_notifies_watchers(ds: Callable[..., ServerProc]) -> None:
    p = ds()
    with Client(p) as c:
        granted_at = time.monotonic()  # the server grants after this instant
        lid = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2)).ID
        c.kv.Put(pb.PutRequest(key=b"eph/a", value=b"1", lease=lid))
        c.kv.Put(pb.PutRequest(key=b"eph/b", value=b"2", lease=lid))
        rev = c.kv.Range(pb.RangeRequest(key=b"eph/a")).header.revision
        events: queue.Queue[pb.WatchResponse] = queue.Queue()
        req = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"eph/", range_end=b"eph0", start_revision=rev + 1))
        stream = c.watch.Watch(iter([req]), timeout=30)

        def pump() -> None:
            try:
                for r in stream:
                    events.put(r)
            except grpc.RpcError:
                pass  # cancelled below once we have what we need

        threading.Thread(target=pump, daemon=True).start()
        got: list[kv_pb2.Event] = []
        while len(got) < 2:
            got.extend(events.get(timeout=30).events)
        elapsed = time.monotonic() - granted_at
        stream.cancel()
        assert [(e.type, e.kv.key) for e in got] == [(kv_pb2.Event.DELETE, b"eph/a"),
                                                     (kv_pb2.Event.DELETE, b"eph/b")]
        assert got[0].kv.mod_revision == got[1].kv.mod_revision == rev + 1  # one revision
        # never before the TTL ran out (a lower bound load cannot break); the upper bound
        # only says "it does expire", generously
        assert 2.0 <= elapsed < 30.0, elapsed
        ttl = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lid))
        assert ttl.TTL == -1


def test_lease_remaining_ttl_survives_restart(ds: Callable[..., ServerProc]) -> None:
    p = ds("--experimental-lease-checkpoint-interval=200ms")
    with Client(p) as c:
        lid = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30)).ID
        c.kv.Put(pb.PutRequest(key=b"held", value=b"1", lease=lid))

        def ttl() -> int:
            return c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lid)).TTL

        # count down well past several 200 ms checkpoint intervals
        wait_until(lambda: ttl() <= 24, 30, "the lease to run down to 24s")
        before = ttl()
    p.stop()
    p2 = p.start()  # restart on the same data dir and ports
    with Client(p2) as c:
        after = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lid, keys=True))
        assert after.grantedTTL == 30
        # A lease without a checkpoint restarts from its full 30 s (+ an election timeout).
        # A checkpointed one resumes from its last checkpoint: no more than what we saw
        # before the stop plus the election-timeout extension (1 s) and 2 s of slack for
        # a checkpoint that lagged; the clock does not run while the member is down.
        assert 0 < after.TTL <= before + 3 < 30, (before, after)
        assert list(after.keys) == [b"held"]


def test_periodic_auto_compaction(ds: Callable[..., ServerProc]) -> None:
    p = ds("--auto-compaction-mode=periodic", "--auto-compaction-retention=1s")
    with Client(p) as c:
        first = c.kv.Put(pb.PutRequest(key=b"a", value=b"1")).header.revision
        c.kv.Put(pb.PutRequest(key=b"a", value=b"2"))

        def compacted() -> bool:
            try:
                c.kv.Range(pb.RangeRequest(key=b"a", revision=first))
                return False
            except grpc.RpcError as e:
                assert e.details() == "etcdserver: mvcc: required revision has been compacted"
                return True

        wait_until(compacted, 20, "automatic compaction past the first revision")
        assert c.kv.Range(pb.RangeRequest(key=b"a")).kvs[0].value == b"2"


def test_snapshot_save_and_restore(ds: Callable[..., ServerProc], tmp_path: Path) -> None:
    p = ds()
    with Client(p) as c:
        for i in range(50):
            c.kv.Put(pb.PutRequest(key=b"s%02d" % i, value=b"v%d" % i))
        lid = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600)).ID
        c.kv.Put(pb.PutRequest(key=b"leased", value=b"x", lease=lid))
        rev = c.kv.Range(pb.RangeRequest(key=b"s00")).header.revision
    snap = tmp_path / "snap.db"
    ctl(p, "snapshot", "save", str(snap))
    restored = tmp_path / "restored"
    r = subprocess.run([sys.executable, "-m", "datastore", "snapshot", "restore", str(snap),
                        "--name", "fresh", "--data-dir", str(restored)], capture_output=True)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.db"
    bad.write_bytes(snap.read_bytes()[:-1])
    r = subprocess.run([sys.executable, "-m", "datastore", "snapshot", "restore", str(bad),
                        "--data-dir", str(tmp_path / "x")], capture_output=True)
    assert r.returncode != 0 and b"snapshot missing hash" in r.stderr
    p2 = datastore_proc(tmp_path, name="fresh", extra=["--data-dir", str(restored)])
    p2.start()
    try:
        with Client(p2) as c:
            resp = c.kv.Range(pb.RangeRequest(key=b"s", range_end=b"t"))
            assert [kv.value for kv in resp.kvs] == [b"v%d" % i for i in range(50)]
            assert resp.header.revision == rev
            assert c.kv.Range(pb.RangeRequest(key=b"leased")).kvs[0].lease == lid
            assert c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lid)).grantedTTL == 600
            assert c.kv.Put(pb.PutRequest(key=b"after", value=b"1")).header.revision == rev + 1
    finally:
        p2.stop()


def test_sigterm_is_a_clean_shutdown(ds: Callable[..., ServerProc]) -> None:
    p = ds()
    with Client(p) as c:
        c.kv.Put(pb.PutRequest(key=b"k", value=b"v"))
    assert p.popen is not None
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(15) == 0
    assert '"stopped"' in p.log_path.read_text()
    p2 = p.start()  # restart on the same data dir and ports
    with Client(p2) as c:
        assert c.kv.Range(pb.RangeRequest(key=b"k")).kvs[0].value == b"v"


def test_slow_watcher_does_not_stall_others(ds: Callable[..., ServerProc]) -> None:
    p = ds()
    n, value = 1500, b"v" * 2000
    with Client(p) as c, Client(p) as c2:
        start_rev = c.kv.Range(pb.RangeRequest(key=b"w")).header.revision + 1
        create = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"w/", range_end=b"w0", start_revision=start_rev))
        stop = threading.Event()

        def requests() -> Iterator[pb.WatchRequest]:
            yield create
            stop.wait()

        slow = c2.watch.Watch(requests(), timeout=60)
        assert next(slow).created  # then we do not read it while ~3 MB of events pile up
        fast = c.watch.Watch(requests(), timeout=60)
        assert next(fast).created
        for i in range(n):
            c.kv.Put(pb.PutRequest(key=b"w/%04d" % i, value=value))

        def drain(stream: Iterator[pb.WatchResponse]) -> list[int]:
            revs: list[int] = []
            while len(revs) < n:
                revs.extend(e.kv.mod_revision for e in next(stream).events)
            return revs

        expected = list(range(start_rev, start_rev + n))
        assert drain(fast) == expected  # the fast watcher got everything while slow stalled
        assert drain(slow) == expected  # the slow one caught up, in order, no gaps/dupes
        stop.set()


def test_a_stream_behind_sends_one_response_per_watcher(ds: Callable[..., ServerProc]) -> None:
    """While a stream cannot send (its client is not reading), each watcher's events of
    later revisions join its response still waiting to be sent, as etcd's responses
    carry several revisions: fewer messages, each watcher's events exact and in order."""
    p = ds()
    watchers, writes = 20, 10
    # no BDP probing: the HTTP/2 window stays at 64 KiB, so one large event fills it
    channel = grpc.insecure_channel(p.endpoint, options=[("grpc.http2.bdp_probe", 0)])
    with Client(p) as c, channel:
        stub = rpc_pb2_grpc.WatchStub(channel)
        creates = [pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"m/", range_end=b"m0")) for _ in range(watchers)]
        creates.append(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"big")))
        stream, q = _watch_on(stub, *creates)
        ids = [next(stream).watch_id for _ in creates]
        assert len(set(ids)) == len(creates)
        c.kv.Put(pb.PutRequest(key=b"big", value=b"b" * 1_000_000))  # fills the window
        revs = [c.kv.Put(pb.PutRequest(key=b"m/%d" % i, value=b"v")).header.revision
                for i in range(writes)]
        got: dict[int, list[int]] = {w: [] for w in ids[:watchers]}
        responses = 0
        while sum(len(v) for v in got.values()) < watchers * writes:
            resp = next(stream)
            if resp.watch_id in got:
                responses += 1
                got[resp.watch_id].extend(e.kv.mod_revision for e in resp.events)
        assert all(v == revs for v in got.values()), got
        # one response per watcher, or two if the first write's went out before the
        # stream stalled: not one per watcher and write
        assert responses <= 2 * watchers, responses
        q.put(None)


def _watch_on(stub: rpc_pb2_grpc.WatchStub, *reqs: pb.WatchRequest, timeout: float = 60
              ) -> tuple[Iterator[pb.WatchResponse], queue.Queue[pb.WatchRequest | None]]:
    """A Watch stream fed from a queue: put more requests on it, None ends the stream."""
    q: queue.Queue[pb.WatchRequest | None] = queue.Queue()
    for r in reqs:
        q.put(r)

    def gen() -> Iterator[pb.WatchRequest]:
        while (r := q.get()) is not None:
            yield r

    return stub.Watch(gen(), timeout=timeout), q


def _watch(c: Client, *reqs: pb.WatchRequest) -> tuple[Iterator[pb.WatchResponse],
                                                       queue.Queue[pb.WatchRequest | None]]:
    return _watch_on(c.watch, *reqs, timeout=30)


def test_progress_notify_and_request_progress(ds: Callable[..., ServerProc]) -> None:
    p = ds("--experimental-watch-progress-notify-interval=300ms")
    with Client(p) as c:
        c.kv.Put(pb.PutRequest(key=b"p", value=b"1"))
        stream, q = _watch(c, pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"p", progress_notify=True)))
        created = next(stream)
        assert created.created
        other = c.kv.Put(pb.PutRequest(key=b"unrelated", value=b"x")).header.revision
        # An idle watcher that asked for progress gets empty responses for its watch ID at
        # the current revision. One may have been sent before the put was applied, so
        # only the order is asserted: revisions never go back and one reaches ``other``.
        t0 = time.monotonic()
        revs: list[int] = []
        while not revs or revs[-1] < other:
            note = next(stream)
            assert (note.watch_id, list(note.events)) == (created.watch_id, []), note
            revs.append(note.header.revision)
        assert revs == sorted(revs) and revs[-1] == other, revs
        assert time.monotonic() - t0 < 15, "progress notifications stalled"  # generous
        # The progress_request reply's watch ID is compared with real etcd's in
        # test_differential_watch.py; here: it reports the current revision, no events.
        q.put(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        while True:
            resp = next(stream)
            if resp.watch_id != created.watch_id:
                break
        assert not resp.events and resp.header.revision == other
        q.put(None)


def test_fragmented_watch_responses(ds: Callable[..., ServerProc]) -> None:
    p = ds("--max-request-bytes=20000")
    with Client(p) as c:
        start_rev = c.kv.Range(pb.RangeRequest(key=b"f")).header.revision + 1
        # ~720 kB of history, replayed to the watcher in one batch: above etcd's limit for
        # a watch response (the request limit + 512 KiB of gRPC overhead). The exact split
        # is compared with real etcd's in test_differential_live.py.
        n = 40
        for i in range(n):
            c.kv.Put(pb.PutRequest(key=b"f/%02d" % i, value=b"v" * 18000))
        stream, q = _watch(c, pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"f/", range_end=b"f0", start_revision=start_rev, fragment=True)))
        assert next(stream).created
        parts = []
        while True:
            resp = next(stream)
            parts.append(resp)
            if not resp.fragment:
                break
        assert len(parts) >= 2
        assert all(r.fragment for r in parts[:-1])
        assert all(r.ByteSize() < 20000 + 512 * 1024 for r in parts)
        events = [e for r in parts for e in r.events]
        assert [e.kv.key for e in events] == [b"f/%02d" % i for i in range(n)]
        assert [e.kv.mod_revision for e in events] == list(range(start_rev, start_rev + n))
        q.put(None)


def test_http_health_version_metrics_and_grpc_health(ds: Callable[..., ServerProc]) -> None:
    import json
    import urllib.error
    import urllib.request

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from datastore.testing.procs import free_port

    port = free_port()
    p = ds(f"--listen-metrics-urls=http://127.0.0.1:{port}", "--quota-backend-bytes=2000000")
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    # the values are compared with real etcd's in test_differential_live.py
    code, body = get("/version")
    assert code == 200 and sorted(json.loads(body)) == ["etcdcluster", "etcdserver"], body
    assert get("/health") == (200, json.dumps({"health": "true", "reason": ""}))
    status, text = get("/metrics")
    assert status == 200 and "etcd_server_has_leader 1.0" in text
    with Client(p) as c:
        rev = c.kv.Put(pb.PutRequest(key=b"m", value=b"1")).header.revision
        assert f"etcd_debugging_mvcc_current_revision {rev}.0" in get("/metrics")[1]
        check = health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        c.maint.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.NOSPACE))
    assert get("/health") == (503, json.dumps({"health": "false", "reason": "ALARM NOSPACE"}))
    assert get("/nope")[0] == 404
