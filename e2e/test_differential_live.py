"""Differential tests of stateful, timed and streaming answers against real etcd 3.4.

test_differential.py compares request/response pairs; these run one scripted interaction
on a real etcd and on the target (in parallel threads: several wait for lease expiry)
and compare what each returned: live watch streams (several watch IDs on one stream,
cancel, progress notifications and progress requests, fragmentation), lease expiry with
short TTLs, keep-alive streams, compaction with ``physical=false``, Maintenance and
Cluster answers, quota errors, and the HTTP ``/version`` shape.

Normalising: headers lose cluster_id / member_id / raft_term (test_differential.norm);
member IDs, peer/client URLs, sizes and the version string, which must differ between
two servers, are replaced by placeholders, and the target's version claims are checked
on their own. Known etcd 3.5 differences from 3.4 (the target implements 3.5) are
scrubbed explicitly, each where it applies: Cluster and Alarm responses carry the
header revision, HashKV has ``hash_revision``. Every comparison is exact otherwise, error
strings included.
"""

from __future__ import annotations

import difflib
import json
import queue
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import PairFactory, ServerFactory
from e2e_util import Client, target_is_etcd
from google.protobuf.message import Message
from test_differential import Item, items_equal, norm, render

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.mvccpb import kv_pb2
from datastore.testing.procs import ServerProc, free_port

Script = Callable[[Client], list[Item]]


def run_both(pair: tuple[ServerProc, ServerProc], script: Script, ttl_tolerance: int = 1) -> None:
    """Run ``script`` against etcd and the target at the same time; compare the items."""
    oracle, target = pair
    out: dict[str, list[Item]] = {}
    errs: dict[str, BaseException] = {}

    def one(label: str, proc: ServerProc) -> None:
        try:
            with Client(proc) as c:
                out[label] = script(c)
        except BaseException as e:  # reported below, with the other side's answers
            errs[label] = e

    threads = [threading.Thread(target=one, args=(lbl, p)) for lbl, p in
               (("etcd", oracle), ("target", target))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if "etcd" in errs:
        raise AssertionError(f"harness: the script failed on etcd: {errs['etcd']!r}") from errs["etcd"]
    if "target" in errs:
        raise AssertionError(f"script failed on {target.kind}: {errs['target']!r}; etcd answered:\n"
                             + "\n".join(render(out["etcd"]))) from errs["target"]
    a, b = out["etcd"], out["target"]
    if not items_equal(a, b, ttl_tolerance):
        diff = "\n".join(difflib.unified_diff(render(a), render(b), "etcd", target.kind,
                                              lineterm=""))
        pytest.fail(f"answers differ:\n{diff}", pytrace=False)


def msg(label: str, m: Message, scrub: Callable[[Message], None] | None = None) -> Item:
    if scrub is not None:
        c = type(m)()
        c.CopyFrom(m)
        scrub(c)
        m = c
    return ("msg", label, norm(m))


def call(label: str, fn: Callable[[], Message],
         scrub: Callable[[Message], None] | None = None) -> Item:
    try:
        return msg(label, fn(), scrub)
    except grpc.RpcError as e:
        return ("err", label, e.code().name, e.details() or "")


class Stream:
    """A bidirectional stream driven from a request queue, read on a thread."""

    def __init__(self, open_stream: Callable[[Iterator[Any]], Iterator[Any]]) -> None:
        self.reqs: queue.Queue[Any] = queue.Queue()
        self.resps: queue.Queue[Any] = queue.Queue()
        self.call = open_stream(self._gen())
        threading.Thread(target=self._read, daemon=True).start()

    def _gen(self) -> Iterator[Any]:
        while (r := self.reqs.get()) is not None:
            yield r

    def _read(self) -> None:
        try:
            for r in self.call:
                self.resps.put(r)
        except grpc.RpcError as e:
            self.resps.put(e)

    def send(self, r: Any) -> None:
        self.reqs.put(r)

    def recv(self, timeout: float = 15.0) -> Any:
        r = self.resps.get(timeout=timeout)
        if isinstance(r, grpc.RpcError):
            raise r
        return r

    def quiet(self, timeout: float = 0.3) -> bool:
        """Nothing more arrives within ``timeout`` (used only to assert an absence)."""
        try:
            r = self.resps.get(timeout=timeout)
        except queue.Empty:
            return True
        self.resps.put(r)
        return False

    def close(self) -> None:
        self.reqs.put(None)
        self.call.cancel()  # type: ignore[attr-defined]


def create(key: bytes, end: bytes = b"", **kw: Any) -> pb.WatchRequest:
    return pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=end, **kw))


def put(c: Client, k: bytes, v: bytes, lease: int = 0) -> int:
    return c.kv.Put(pb.PutRequest(key=k, value=v, lease=lease), timeout=10).header.revision


# ------------------------------------------------------------------------- watch streams

def test_live_watch_stream_several_ids_cancel_progress(pair_factory: PairFactory) -> None:
    def script(c: Client) -> list[Item]:
        out: list[Item] = []
        put(c, b"a/0", b"old")
        s = Stream(c.watch.Watch)
        # events per watch ID (batching may differ, their order may not); a watch that
        # replays history sends events as soon as it exists, between control replies
        per_id: dict[int, list[Message]] = {}

        def control() -> pb.WatchResponse:
            while (r := s.recv()).events:
                assert not r.created and not r.canceled, r
                per_id.setdefault(r.watch_id, []).extend(r.events)
            return r
        try:
            # several watches on one stream, each answered before the next request
            for label, req in [
                ("a/ prefix", create(b"a/", b"a0")),
                ("b prev_kv", create(b"b", prev_kv=True)),
                ("a/ no puts", create(b"a/", b"a0", filters=[pb.WatchCreateRequest.NOPUT])),
                ("history", create(b"a/", b"a0", start_revision=1)),
                ("explicit id 7", create(b"c", watch_id=7)),
                ("duplicate id 7", create(b"c", watch_id=7)),
                ("empty key", create(b"")),
            ]:
                s.send(req)
                out.append(msg(f"create {label}", control()))

            def collect(n_events: int) -> None:
                while sum(len(v) for v in per_id.values()) < n_events:
                    r = s.recv()
                    assert not r.canceled and not r.created, r
                    per_id.setdefault(r.watch_id, []).extend(r.events)

            put(c, b"a/1", b"x")
            put(c, b"b", b"1")
            put(c, b"b", b"2")
            c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"a/", range_end=b"a0"), timeout=10)
            put(c, b"c", b"7")
            # a/ prefix: 1 put + 2 deletes; b: 2; no-puts: 2; history: old + 1 + 2; 7: 1
            collect(3 + 2 + 2 + 4 + 1)
            for wid in sorted(per_id):
                out.extend(msg(f"watch {wid} event {i}", e) for i, e in enumerate(per_id[wid]))
            # cancel one: its canceled reply, then no more events for it
            s.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=1)))
            out.append(msg("cancel 1", control()))
            # cancelling an unknown ID: the next reply is the progress reply, not a cancel
            s.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=99)))
            s.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
            out.append(msg("progress reply", s.recv()))
            put(c, b"b", b"3")  # nobody watches b any more
            put(c, b"c", b"8")
            out.append(msg("after cancel", s.recv()))
            out.append(("msg", "quiet", str(s.quiet())))
        finally:
            s.close()
        return out
    run_both(pair_factory(), script)


def test_progress_notify_interval(pair_factory: PairFactory) -> None:
    def script(c: Client) -> list[Item]:
        out: list[Item] = []
        put(c, b"p", b"1")
        s = Stream(c.watch.Watch)
        try:
            s.send(create(b"p", progress_notify=True))
            s.send(create(b"q"))  # did not ask: no notifications for it
            out.append(msg("created p", s.recv()))
            out.append(msg("created q", s.recv()))
            rev = put(c, b"unrelated", b"x")
            # notifications are periodic: skip any sent before the put was applied
            while (r := s.recv()).header.revision < rev:
                assert r.watch_id == 0 and not r.events, r
            out.append(msg("notification", r))
            out.append(msg("next notification", s.recv()))
        finally:
            s.close()
        return out
    run_both(pair_factory(["--experimental-watch-progress-notify-interval=300ms"]), script)


def test_fragmented_watch_stream(pair_factory: PairFactory) -> None:
    def script(c: Client) -> list[Item]:
        out: list[Item] = []
        # etcd fragments above the request limit plus 512 KiB of gRPC overhead
        start = put(c, b"f/start", b"") + 1
        for i in range(40):
            put(c, b"f/%02d" % i, b"v" * 18000)
        s = Stream(c.watch.Watch)
        try:
            s.send(create(b"f/", b"f0", start_revision=start, fragment=True))
            out.append(msg("created", s.recv()))
            n = 0
            while True:
                r = s.recv()
                out.append(("msg", f"fragment {n}", f"fragment={r.fragment} "
                            f"events={[e.kv.key.decode() for e in r.events]}"))
                n += 1
                if not r.fragment:
                    break
            # unfragmented watcher on the same stream gets it in one response
            s.send(create(b"f/", b"f0", start_revision=start))
            out.append(msg("created whole", s.recv()))
            r = s.recv()
            out.append(("msg", "whole", f"fragment={r.fragment} n={len(r.events)}"))
        finally:
            s.close()
        return out
    run_both(pair_factory(["--max-request-bytes=20000"]), script)


# ------------------------------------------------------------------------- leases

def test_short_ttl_lease_expiry(pair_factory: PairFactory) -> None:
    def script(c: Client) -> list[Item]:
        out: list[Item] = []
        # TTL 1 is below etcd's minimum (1.5 election timeouts, rounded up): raised to 2
        out.append(call("grant", lambda: c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=1, ID=301),
                                                            timeout=10)))
        out.append(call("grant 3", lambda: c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3, ID=302),
                                                              timeout=10)))
        rev = put(c, b"e/a", b"1", lease=301)
        put(c, b"e/b", b"2", lease=301)
        put(c, b"e/c", b"3", lease=302)
        s = Stream(c.watch.Watch)
        try:
            s.send(create(b"e/", b"e0", start_revision=rev, prev_kv=True))
            out.append(msg("created", s.recv()))
            events: list[kv_pb2.Event] = []
            while len(events) < 3 + 3:  # 3 puts, then 2 deletes for 301, 1 for 302
                events.extend(s.recv(timeout=30).events)
            out.extend(msg(f"event {i}", e) for i, e in enumerate(events))
        finally:
            s.close()
        out.append(call("ttl expired", lambda: c.lease.LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=301, keys=True), timeout=10)))
        out.append(call("leases", lambda: c.lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=10)))
        out.append(call("revoke expired", lambda: c.lease.LeaseRevoke(
            pb.LeaseRevokeRequest(ID=301), timeout=10)))
        out.append(call("put with expired", lambda: c.kv.Put(
            pb.PutRequest(key=b"e/d", value=b"", lease=301), timeout=10)))
        out.append(call("range", lambda: c.kv.Range(pb.RangeRequest(key=b"e/", range_end=b"e0"),
                                                     timeout=10)))
        return out
    run_both(pair_factory(), script)


def test_keep_alive_stream(pair_factory: PairFactory) -> None:
    def script(c: Client) -> list[Item]:
        out: list[Item] = []
        c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=10, ID=401), timeout=10)
        c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=20, ID=402), timeout=10)
        put(c, b"k", b"v", lease=401)
        s = Stream(c.lease.LeaseKeepAlive)
        try:
            for i, lid in enumerate([401, 402, 401, 999, 0]):
                s.send(pb.LeaseKeepAliveRequest(ID=lid))
                out.append(msg(f"keepalive {i} ({lid})", s.recv()))
            c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=401), timeout=10)
            s.send(pb.LeaseKeepAliveRequest(ID=401))
            out.append(msg("keepalive revoked", s.recv()))
            s.send(pb.LeaseKeepAliveRequest(ID=402))
            out.append(msg("keepalive 402 again", s.recv()))
        finally:
            s.close()
        r = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=402), timeout=10)
        out.append(("ttl", "402 remaining", str(r.TTL)))
        out.append(("msg", "402 granted", str(r.grantedTTL)))
        return out
    run_both(pair_factory(), script)


# ------------------------------------------------------------------------- compaction

def test_compaction_not_physical(pair_factory: PairFactory) -> None:
    def script(c: Client) -> list[Item]:
        out: list[Item] = []
        revs = [put(c, b"k", b"v%d" % i) for i in range(6)]
        put(c, b"other", b"o")
        mid = revs[3]
        out.append(call("compact", lambda: c.kv.Compact(
            pb.CompactionRequest(revision=mid, physical=False), timeout=10)))
        for r in (revs[2], mid, revs[5]):
            out.append(call(f"range at {r - revs[0]}", lambda r=r: c.kv.Range(
                pb.RangeRequest(key=b"k", revision=r), timeout=10)))
        out.append(call("compact again", lambda: c.kv.Compact(
            pb.CompactionRequest(revision=mid), timeout=10)))
        out.append(call("compact older", lambda: c.kv.Compact(
            pb.CompactionRequest(revision=revs[1]), timeout=10)))
        out.append(call("compact future", lambda: c.kv.Compact(
            pb.CompactionRequest(revision=revs[5] + 10), timeout=10)))
        out.append(call("hashkv", lambda: c.maint.HashKV(pb.HashKVRequest(revision=revs[5]),
                                                        timeout=10), _scrub_hash_rev))
        out.append(call("hashkv compacted", lambda: c.maint.HashKV(
            pb.HashKVRequest(revision=revs[1]), timeout=10)))
        s = Stream(c.watch.Watch)
        try:
            s.send(create(b"k", start_revision=revs[1]))
            out.append(msg("watch compacted: created", s.recv()))
            out.append(msg("watch compacted: canceled", s.recv()))
            s.send(create(b"k", start_revision=mid))
            out.append(msg("watch at compact rev", s.recv()))
            r = s.recv()
            out.append(("msg", "replayed", str([e.kv.mod_revision - revs[0] for e in r.events])))
        finally:
            s.close()
        return out
    run_both(pair_factory(), script)


# ------------------------------------------------------------------------- maintenance, cluster

def _scrub_header_rev(m: Message) -> None:
    """etcd 3.5 fills the revision into Cluster and Alarm response headers; 3.4 not."""
    m.header.revision = 0  # type: ignore[attr-defined]


def _scrub_member(m: Message) -> None:
    """Member IDs and URLs differ between any two servers: keep only their presence;
    the list is sorted by ID (random here), so order by what is left."""
    _scrub_header_rev(m)
    if "member" in m.DESCRIPTOR.fields_by_name and m.HasField("member"):
        _scrub_one(m.member)  # type: ignore[attr-defined]
    if "members" in m.DESCRIPTOR.fields_by_name:
        for mem in m.members:  # type: ignore[attr-defined]
            _scrub_one(mem)
        ordered = sorted(m.members, key=lambda x: (x.isLearner, x.name))  # type: ignore[attr-defined]
        copies = [type(x)() for x in ordered]
        for c, x in zip(copies, ordered, strict=True):
            c.CopyFrom(x)
        del m.members[:]  # type: ignore[attr-defined]
        m.members.extend(copies)  # type: ignore[attr-defined]


def _scrub_one(mem: Message) -> None:
    mem.ID = 1 if mem.ID else 0  # type: ignore[attr-defined]
    mem.peerURLs[:] = ["<peer>" for _ in mem.peerURLs]  # type: ignore[attr-defined]
    mem.clientURLs[:] = ["<client>" for _ in mem.clientURLs]  # type: ignore[attr-defined]


def _scrub_hash_rev(m: Message) -> None:
    """HashKVResponse.hash_revision is etcd 3.5's (3.4 lacks the field)."""
    m.hash_revision = 0  # type: ignore[attr-defined]


def _scrub_status(m: Message) -> None:
    """Sizes, versions and indexes are the two implementations' own; keep the shape and
    the relations (leader is this member, version is set)."""
    st: pb.StatusResponse = m  # type: ignore[assignment]
    st.leader = int(st.leader == st.header.member_id)
    st.version = "<set>" if st.version else ""
    st.dbSize = int(st.dbSize > 0)
    st.dbSizeInUse = int(st.dbSizeInUse > 0)
    st.raftIndex = int(st.raftIndex > 0)
    st.raftTerm = int(st.raftTerm > 0)
    st.raftAppliedIndex = int(st.raftAppliedIndex > 0)


def _scrub_alarms(m: Message) -> None:
    _scrub_header_rev(m)
    for a in m.alarms:  # type: ignore[attr-defined]
        a.memberID = 1 if a.memberID else 0


def test_maintenance_and_cluster_answers(pair_factory: PairFactory) -> None:
    # Deadlines of 30 s: the membership calls wait for a raft round on each side, and a
    # loaded 2-core machine once took real etcd past 10 s (DEADLINE_EXCEEDED vs NOT_FOUND).
    def script(c: Client) -> list[Item]:
        out: list[Item] = []
        put(c, b"m", b"1")
        out.append(call("status", lambda: c.maint.Status(pb.StatusRequest(), timeout=30),
                        _scrub_status))
        st = c.maint.Status(pb.StatusRequest(), timeout=30)
        me = st.header.member_id
        out.append(call("alarm get", lambda: c.maint.Alarm(pb.AlarmRequest(), timeout=30),
                        _scrub_alarms))
        out.append(call("alarm activate", lambda: c.maint.Alarm(pb.AlarmRequest(
            action=pb.AlarmRequest.ACTIVATE, memberID=me, alarm=pb.NOSPACE), timeout=30),
            _scrub_alarms))
        out.append(call("alarm get 2", lambda: c.maint.Alarm(pb.AlarmRequest(), timeout=30),
                        _scrub_alarms))
        out.append(call("put under alarm", lambda: c.kv.Put(pb.PutRequest(key=b"m", value=b"2"),
                                                            timeout=30)))
        out.append(call("alarm deactivate", lambda: c.maint.Alarm(pb.AlarmRequest(
            action=pb.AlarmRequest.DEACTIVATE, memberID=me, alarm=pb.NOSPACE), timeout=30),
            _scrub_alarms))
        out.append(call("alarm deactivate again", lambda: c.maint.Alarm(pb.AlarmRequest(
            action=pb.AlarmRequest.DEACTIVATE, memberID=me, alarm=pb.NOSPACE), timeout=30),
            _scrub_alarms))
        out.append(call("defragment", lambda: c.maint.Defragment(pb.DefragmentRequest(),
                                                                 timeout=30)))
        out.append(call("hashkv", lambda: c.maint.HashKV(pb.HashKVRequest(), timeout=30),
                        _scrub_hash_rev))
        out.append(call("move leader to unknown", lambda: c.maint.MoveLeader(
            pb.MoveLeaderRequest(targetID=12345), timeout=30)))
        out.append(call("member list", lambda: c.cluster.MemberList(pb.MemberListRequest(),
                                                                    timeout=30), _scrub_member))
        out.append(call("add bad url", lambda: c.cluster.MemberAdd(pb.MemberAddRequest(
            peerURLs=["not a url"], isLearner=True), timeout=30)))
        out.append(call("add existing url", lambda: c.cluster.MemberAdd(pb.MemberAddRequest(
            peerURLs=[f"http://127.0.0.1:{c.proc.peer_port}"], isLearner=True), timeout=30)))
        learner_url = "http://127.0.0.1:1"  # never started: stays an unsynced learner
        added = c.cluster.MemberAdd(pb.MemberAddRequest(peerURLs=[learner_url], isLearner=True),
                                    timeout=30)
        out.append(msg("add learner", added, _scrub_member))
        lid = added.member.ID
        out.append(call("list with learner", lambda: c.cluster.MemberList(
            pb.MemberListRequest(), timeout=30), _scrub_member))
        out.append(call("promote unsynced learner", lambda: c.cluster.MemberPromote(
            pb.MemberPromoteRequest(ID=lid), timeout=30)))
        out.append(call("promote voter", lambda: c.cluster.MemberPromote(
            pb.MemberPromoteRequest(ID=me), timeout=30)))
        out.append(call("promote unknown", lambda: c.cluster.MemberPromote(
            pb.MemberPromoteRequest(ID=12345), timeout=30)))
        out.append(call("update unknown", lambda: c.cluster.MemberUpdate(pb.MemberUpdateRequest(
            ID=12345, peerURLs=["http://127.0.0.1:2"]), timeout=30)))
        out.append(call("remove unknown", lambda: c.cluster.MemberRemove(
            pb.MemberRemoveRequest(ID=12345), timeout=30)))
        out.append(call("remove learner", lambda: c.cluster.MemberRemove(
            pb.MemberRemoveRequest(ID=lid), timeout=30), _scrub_member))
        out.append(call("remove learner again", lambda: c.cluster.MemberRemove(
            pb.MemberRemoveRequest(ID=lid), timeout=30)))
        return out
    run_both(pair_factory(), script)


def test_quota_errors(pair_factory: PairFactory) -> None:
    def script(c: Client) -> list[Item]:
        out: list[Item] = []
        big = b"x" * 100_000
        # the two back ends fill at different rates: compare from the first refusal on
        for i in range(400):
            try:
                c.kv.Put(pb.PutRequest(key=b"q%03d" % i, value=big), timeout=10)
            except grpc.RpcError as e:
                out.append(("err", "first refusal", e.code().name, e.details() or ""))
                break
        else:
            raise AssertionError("quota never triggered")
        # the back ends fill at different rates, so revisions count from the refusal
        base = c.kv.Range(pb.RangeRequest(key=b"s"), timeout=10).header.revision

        def rel(m: Message) -> None:
            if m.DESCRIPTOR.full_name == "etcdserverpb.ResponseHeader":
                m.revision -= base  # type: ignore[attr-defined]
                return
            for fd, val in m.ListFields():
                if fd.message_type is not None:
                    for v in (val if fd.is_repeated else [val]):
                        rel(v)
        out.append(call("alarm list", lambda: c.maint.Alarm(pb.AlarmRequest(), timeout=10),
                        _scrub_alarms))
        out.append(call("small put", lambda: c.kv.Put(pb.PutRequest(key=b"s", value=b"v"),
                                                      timeout=10)))
        out.append(call("txn put", lambda: c.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(
            request_put=pb.PutRequest(key=b"s", value=b"v"))]), timeout=10)))
        out.append(call("txn read", lambda: c.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(
            request_range=pb.RangeRequest(key=b"s"))]), timeout=10), rel))
        out.append(call("lease grant", lambda: c.lease.LeaseGrant(
            pb.LeaseGrantRequest(TTL=60, ID=501), timeout=10)))
        out.append(call("count", lambda: c.kv.Range(pb.RangeRequest(
            key=b"q", range_end=b"r", count_only=True), timeout=10),
            lambda m: (rel(m), setattr(m, "count", int(m.count > 0)))))  # type: ignore[attr-defined]
        out.append(call("delete", lambda: c.kv.DeleteRange(pb.DeleteRangeRequest(
            key=b"q", range_end=b"r"), timeout=10),
            lambda m: (rel(m), setattr(m, "deleted", int(m.deleted > 0)))))  # type: ignore[attr-defined]
        out.append(call("put after delete", lambda: c.kv.Put(pb.PutRequest(key=b"s", value=b"v"),
                                                             timeout=10)))
        return out
    run_both(pair_factory(["--quota-backend-bytes=2000000"]), script)


# ------------------------------------------------------------------------- /version

VERSION_RE = re.compile(r"^3\.\d+\.\d+$")


@pytest.mark.skipif(target_is_etcd(), reason="checks the target's own version claims")
def test_version_shape_matches_etcd(server_factory: ServerFactory) -> None:
    port = free_port()
    oracle = server_factory("etcd")
    ds = server_factory("datastore", [f"--listen-metrics-urls=http://127.0.0.1:{port}"])
    with urllib.request.urlopen(f"{oracle.client_url}/version", timeout=10) as r:
        etcd_v = json.loads(r.read())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=10) as r:
        ours = json.loads(r.read())
    with Client(ds) as c:
        status_version = c.maint.Status(pb.StatusRequest(), timeout=10).version
    # the same keys, with values of the same form: "X.Y.Z" and a cluster version "X.Y.0"
    assert sorted(ours) == sorted(etcd_v) == ["etcdcluster", "etcdserver"], (ours, etcd_v)
    for v in (ours, etcd_v):
        assert VERSION_RE.match(v["etcdserver"]) and VERSION_RE.match(v["etcdcluster"]), v
        assert v["etcdcluster"] == ".".join(v["etcdserver"].split(".")[:2]) + ".0", v
    # our own claim: etcd 3.5's API (clients switch features on by it), consistently
    # between /version and the Status RPC
    assert ours["etcdserver"].startswith("3.5.") and ours["etcdserver"] == status_version
