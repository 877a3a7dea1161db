"""Rolling upgrade from the previous release (built from its git tag) to this checkout.

A 3-member cluster of the previous release serves a writer that records every
acknowledged write. Members are replaced one at a time by this checkout on the same data
dir, with a small raft log so that a member that was down comes back through a snapshot:
once from a previous-release leader to an upgraded member, once from an upgraded leader to
a previous-release member. One member goes back down to the previous release while the
cluster version is still the old one; then the upgrade finishes. At the end every member
has agreed on the new cluster version, HashKV agrees, every acknowledged write is there,
and no write was refused for longer than an election (a generous bound on a loaded
machine). Every wait polls a condition.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from cluster_util import Cluster, hash_kv, put, status, values, wait_for
from e2e_util import target_is_etcd
from release_util import Release, previous_release, use_head
from test_disk_faults_corruption import corrupt_value, fill_and_catch_up, refused

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.raftpb import raft_pb2, raft_pb2_grpc
from datastore.server.features import RELEASE, RELEASE_ENV, format_level, parse_level
from datastore.testing.procs import ServerProc, datastore_proc

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="datastore releases only")

SMALL_LOG = ["--snapshot-count", "50", "--experimental-snapshot-catchup-entries", "10"]
NEW_LEVEL = format_level(parse_level(RELEASE))
# No write may be refused for longer than an election; the election timeout is 0.5 s, and
# a loaded 2-core machine takes its time to restart members and fail the client over.
MAX_REFUSED_S = 10.0
OLD_MEMBER = "a member runs a release older than the cluster version; upgrade it"


@pytest.fixture(scope="module")
def previous() -> Release:
    return previous_release()


def peer_versions(proc: ServerProc) -> tuple[str, str]:
    """(release, cluster version) as the member reports them on its peer port."""
    with grpc.insecure_channel(f"127.0.0.1:{proc.peer_port}") as ch:
        r = raft_pb2_grpc.RaftTransportStub(ch).Members(raft_pb2.MembersRequest(), timeout=5)
    return r.release, r.cluster_version




class Writer:
    """Puts ``/w/<n>`` in a loop, failing over between members; records what was
    acknowledged and the longest stretch without an acknowledgement while failing."""

    def __init__(self, procs: list[ServerProc]) -> None:
        self.procs = procs
        self.acked: dict[bytes, bytes] = {}
        self.longest_refused = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        channels = {p.name: grpc.insecure_channel(p.endpoint) for p in self.procs}
        i, n = 0, 0
        failing_since: float | None = None
        try:
            while not self._stop.is_set():
                p = self.procs[i % len(self.procs)]
                key, value = f"/w/{n:06d}".encode(), f"v{n}".encode()
                try:
                    rpc_pb2_grpc.KVStub(channels[p.name]).Put(
                        pb.PutRequest(key=key, value=value), timeout=2)
                except grpc.RpcError:
                    self.failures += 1
                    failing_since = failing_since or time.monotonic()
                    i += 1  # the next member
                    continue
                self.acked[key] = value
                if failing_since is not None:
                    self.longest_refused = max(self.longest_refused,
                                               time.monotonic() - failing_since)
                    failing_since = None
                n += 1
                self._stop.wait(0.01)  # pacing: a steady stream, not a flood
            if failing_since is not None:  # still failing at the end counts too
                self.longest_refused = max(self.longest_refused, time.monotonic() - failing_since)
        finally:
            for ch in channels.values():
                ch.close()

    def wait_more(self, count: int) -> None:
        target = len(self.acked) + count
        wait_for(lambda: len(self.acked) >= target, 60, f"{count} more acknowledged writes")


def restart(proc: ServerProc, on: Release | None) -> None:
    """Stop ``proc`` and start it again on ``on`` (None: this checkout), same data dir."""
    assert proc.stop() == 0, proc.log_tail()
    if on is None:
        use_head(proc)
    else:
        on.use(proc)
    proc.launch().wait_ready(60)


def log_count(proc: ServerProc, msg: str) -> int:
    return proc.log_path.read_text(errors="replace").count(f'"msg": "{msg}"')


def snapshot_received(proc: ServerProc) -> int:
    return log_count(proc, "received a snapshot")


def snapshots_sent(procs: list[ServerProc]) -> dict[str, int]:
    return {p.name: log_count(p, "sent a snapshot") for p in procs}


def lag_then_rejoin(c: Cluster, w: Writer, proc: ServerProc, on: Release | None) -> None:
    """Stop ``proc``, let the others compact their raft logs past it, restart it on ``on``:
    it can only catch up through a snapshot from the leader."""
    before = snapshot_received(proc)
    assert proc.stop() == 0, proc.log_tail()
    others = [p for p in c.procs if p is not proc]
    w.wait_more(150)  # three times --snapshot-count: the log no longer holds its entries
    rev = hash_kv(others[0])[0]
    with grpc.insecure_channel(others[0].endpoint) as ch:
        rpc_pb2_grpc.KVStub(ch).Compact(pb.CompactionRequest(revision=rev - 20), timeout=10)
    if on is None:
        use_head(proc)
    else:
        on.use(proc)
    proc.launch().wait_ready(60)
    wait_for(lambda: snapshot_received(proc) > before, 60, f"{proc.name} got a snapshot")


def leader_release(c: Cluster) -> str:
    lead = wait_for(lambda: c.leader_id(), 30, "a leader")
    proc = next(p for p in c.procs if c.member_id(p) == lead)
    return peer_versions(proc)[0]


def test_rolling_upgrade_under_writes(tmp_path: Path, previous: Release) -> None:
    c = Cluster(tmp_path, extra=SMALL_LOG)
    for p in c.procs:
        previous.use(p)
    c.start()
    m0, m1, m2 = c.procs
    try:
        assert {peer_versions(p) for p in c.procs} == {("", "")}  # what 0.14 answers
        with Writer(c.procs) as w:
            w.wait_more(50)
            # 1. m0 to this checkout, through a snapshot from a previous-release leader
            sent = snapshots_sent([m1, m2])
            lag_then_rejoin(c, w, m0, None)
            assert peer_versions(m0) == (RELEASE, "")
            assert snapshots_sent([m1, m2]) != sent  # m1 or m2, both previous-release
            # 2. m1 to this checkout
            restart(m1, None)
            w.wait_more(30)
            # 3. m2 stays on the previous release and catches up through a snapshot from
            # an upgraded leader (m0 or m1: m2 is down while it is elected)
            def new_leader() -> bool:
                c.wait_leader([m0, m1])
                return leader_release(c) == RELEASE
            assert m2.stop() == 0
            wait_for(new_leader, 30, "an upgraded leader")
            sent = snapshots_sent([m0, m1])
            lag_then_rejoin(c, w, m2, previous)
            assert peer_versions(m2) == ("", "")
            assert snapshots_sent([m0, m1]) != sent  # m0 or m1, both upgraded
            # the cluster version waits for m2: still not agreed on the upgraded members
            assert peer_versions(m0)[1] == peer_versions(m1)[1] == ""
            # 4. m1 back down to the previous release, while the cluster version allows it
            restart(m1, previous)
            w.wait_more(30)
            assert peer_versions(m1) == ("", "")
            # 5. finish: m1 and m2 to this checkout; the leader raises the cluster version
            restart(m1, None)
            w.wait_more(30)
            restart(m2, None)
            wait_for(lambda: all(peer_versions(p) == (RELEASE, NEW_LEVEL) for p in c.procs),
                     60, f"cluster version {NEW_LEVEL} on every member")
            w.wait_more(30)
        print(f"acknowledged {len(w.acked)} writes, {w.failures} refused, longest refusal "
              f"{w.longest_refused:.2f}s")
        assert w.acked and w.longest_refused < MAX_REFUSED_S, (
            f"writes were refused for {w.longest_refused:.1f}s ({w.failures} failures)")
        revs = wait_for(lambda: len({hash_kv(p) for p in c.procs}) == 1 and
                        {hash_kv(p) for p in c.procs}, 60, "equal HashKV on every member")
        assert len(revs) == 1
        for p in c.procs:
            got = values(p, b"/w/")
            missing = [k for k in w.acked if got.get(k) != w.acked[k]]
            assert not missing, f"{p.name} lost {len(missing)} acknowledged writes: {missing[:5]}"
        # upgraded members keep the agreed version across a restart
        restart(m0, None)
        assert peer_versions(m0) == (RELEASE, NEW_LEVEL)
        assert status(m0).version.startswith("3.5.")  # clients still see etcd 3.5's API
        # Going back now is not supported, and 0.14 cannot know it: the leader says so
        # (one line per interval) and the cluster version stays where it is.
        restart(m2, previous)
        wait_for(lambda: sum(log_count(p, OLD_MEMBER) for p in (m0, m1)) >= 1, 30,
                 "the leader's warning about the previous-release member")
        assert all(peer_versions(p) == (RELEASE, NEW_LEVEL) for p in (m0, m1))
        restart(m2, None)
    finally:
        c.stop()


def test_corrupt_check_asks_previous_release_peers_on_their_client_urls(
        tmp_path: Path, previous: Release) -> None:
    """A previous-release member has no HashKV on its peer port (UNIMPLEMENTED): an
    upgraded member's start-up corruption check asks its client URL instead, and still
    finds the difference (a peer that does not answer would only warn)."""
    c = Cluster(tmp_path)
    for p in c.procs:
        previous.use(p)
    c.start()
    try:
        target = c.followers()[0]
        fill_and_catch_up(c.leader(), target)
        assert target.stop() == 0
        corrupt_value(target.data_dir, b"k5", b"evil")
        use_head(target).argv.append("--experimental-initial-corrupt-check")
        log = refused(target, "found data inconsistency with peers")
        assert "found different hash values from remote peer" in target.log_tail(40), log
    finally:
        c.stop()


def test_head_opens_a_previous_release_data_dir(tmp_path: Path, previous: Release) -> None:
    p = previous.use(datastore_proc(tmp_path, "one"))
    p.launch().wait_ready(60)
    try:
        for i in range(20):
            put(p, f"/k/{i:02d}".encode(), f"v{i}".encode())
        before = hash_kv(p)
        assert peer_versions(p) == ("", "")
        restart(p, None)
        assert values(p, b"/k/") == {f"/k/{i:02d}".encode(): f"v{i}".encode() for i in range(20)}
        assert hash_kv(p) == before
        wait_for(lambda: peer_versions(p) == (RELEASE, NEW_LEVEL), 30, "the cluster version")
    finally:
        p.stop()


def test_older_release_refuses_a_raised_cluster_version(tmp_path: Path) -> None:
    """A member whose release is below the agreed cluster version does not start: one
    line in etcd's words, a non-zero exit, no traceback. (0.14 itself predates the check;
    this checkout plays an older release through the test-only release variable.)"""
    p = datastore_proc(tmp_path, "one")
    p.launch().wait_ready(60)
    try:
        wait_for(lambda: peer_versions(p) == (RELEASE, NEW_LEVEL), 30, "the cluster version")
        assert p.stop() == 0
        p.env[RELEASE_ENV] = "0.14.0"
        p.launch()
        assert p.popen is not None and p.popen.wait(60) == 2
        out = p.log_path.read_text(errors="replace")
        assert "Traceback" not in out
        line = next(x for x in out.splitlines() if "invalid downgrade" in x)
        assert line.startswith("datastore: error: invalid downgrade; server version is lower "
                               f"than determined cluster version (server version 0.14, "
                               f"cluster version {NEW_LEVEL}, recorded in the data dir)"), line
        del p.env[RELEASE_ENV]
        p.launch().wait_ready(60)  # the right release starts on the same data
    finally:
        p.stop()
