"""etcd's v3lock.Lock and v3election.Election services, against etcdctl's lock and elect.

Every test runs on the server under test and on real etcd 3.4, with stubs generated from
our v3lockpb/v3electionpb protos (wire-identical to etcd's). ``etcdctl lock`` and
``etcdctl elect`` run Go's clientv3/concurrency recipes, so agreeing with them checks the
key layout and the wait-for-predecessor order, not just our own consistency.

"Does not happen" checks (a waiter must not get the lock) first wait for the waiter to be
queued (its key exists), then give it NEGATIVE_WINDOW seconds to misbehave.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from e2e_util import ServerFactory, make_proc

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.mvccpb import kv_pb2
from datastore.api.v3electionpb import v3election_pb2 as epb
from datastore.api.v3electionpb import v3election_pb2_grpc
from datastore.api.v3lockpb import v3lock_pb2 as lpb
from datastore.api.v3lockpb import v3lock_pb2_grpc
from datastore.testing.procs import ETCDCTL_BIN, ServerProc, free_port

NEGATIVE_WINDOW = 1.0  # s a queued waiter gets to (wrongly) acquire
WAIT = 20.0  # s for conditions; generous because the CI machine is shared
RPC_TIMEOUT = 10.0


@pytest.fixture(scope="module", params=["target", "etcd"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One server per kind for the module (starts dominate the runtime): every test uses
    its own lock and election names."""
    proc = make_proc(request.param, tmp_path_factory.mktemp(request.param)).start()
    yield proc
    proc.stop()


class Stubs:
    def __init__(self, proc: ServerProc) -> None:
        self.channel = grpc.insecure_channel(proc.endpoint)
        self.lock = v3lock_pb2_grpc.LockStub(self.channel)
        self.election = v3election_pb2_grpc.ElectionStub(self.channel)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)

    def grant(self, ttl: int = 60) -> int:
        return self.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=RPC_TIMEOUT).ID

    def keys(self, prefix: bytes) -> list[kv_pb2.KeyValue]:
        """Keys under prefix, oldest create revision first (the lock/election queue)."""
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        return list(self.kv.Range(rpc.RangeRequest(
            key=prefix, range_end=end, sort_order=rpc.RangeRequest.ASCEND,
            sort_target=rpc.RangeRequest.CREATE), timeout=RPC_TIMEOUT).kvs)


@pytest.fixture
def stubs(server: ServerProc) -> Iterator[Stubs]:
    s = Stubs(server)
    yield s
    s.channel.close()


def wait_for(cond: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)  # poll interval of the condition


class Ctl:
    """A long-running etcdctl (lock / elect) whose stdout lines a thread collects."""

    def __init__(self, proc: ServerProc, *args: str) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.popen = subprocess.Popen(
            [ETCDCTL_BIN, f"--endpoints={proc.endpoint}", *args],
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()

    def wait_lines(self, n: int, timeout: float = WAIT) -> list[str]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.lines) >= n or self.popen.poll() is not None,
                               timeout)
            return list(self.lines)

    def interrupt(self) -> None:
        """Ctrl-C: etcdctl unlocks / resigns (closes its session) and exits 0."""
        self.popen.send_signal(signal.SIGINT)
        _, err = self.popen.communicate(timeout=WAIT)
        self.thread.join(5)
        assert self.popen.returncode == 0, err.decode(errors="replace")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.communicate()


@pytest.fixture
def ctl(server: ServerProc) -> Iterator[Callable[..., Ctl]]:
    procs: list[Ctl] = []

    def start(*args: str) -> Ctl:
        procs.append(Ctl(server, *args))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()


def rpc_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    e = info.value
    return e.code(), e.details()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- lock

def test_lock_rpc_holder_excludes_etcdctl_lock(stubs: Stubs, ctl: Callable[..., Ctl]) -> None:
    lease = stubs.grant()
    held = stubs.lock.Lock(lpb.LockRequest(name=b"lock1", lease=lease), timeout=RPC_TIMEOUT)
    assert held.key == f"lock1/{lease:x}".encode()  # Go's Mutex layout: <name>/<lease hex>
    assert [kv.key for kv in stubs.keys(b"lock1/")] == [held.key]

    waiter = ctl("lock", "lock1")
    wait_for(lambda: len(stubs.keys(b"lock1/")) == 2, "etcdctl's waiter key")
    assert waiter.wait_lines(1, timeout=NEGATIVE_WINDOW) == [], "etcdctl got a held lock"

    unlocked = stubs.lock.Unlock(lpb.UnlockRequest(key=held.key), timeout=RPC_TIMEOUT)
    got = waiter.wait_lines(1)
    assert got[:1] == [stubs.keys(b"lock1/")[0].key.decode()], got
    assert stubs.keys(b"lock1/")[0].create_revision < unlocked.header.revision
    waiter.interrupt()
    assert stubs.keys(b"lock1/") == []


def test_etcdctl_lock_holder_excludes_lock_rpc(stubs: Stubs, ctl: Callable[..., Ctl]) -> None:
    holder = ctl("lock", "lock2")
    holder_key = holder.wait_lines(1)[:1]
    assert holder_key and holder_key[0].startswith("lock2/"), holder_key

    lease = stubs.grant()
    pending = stubs.lock.Lock.future(lpb.LockRequest(name=b"lock2", lease=lease), timeout=WAIT * 2)
    my_key = f"lock2/{lease:x}".encode()
    wait_for(lambda: [kv.key for kv in stubs.keys(b"lock2/")] == [holder_key[0].encode(), my_key],
             "the Lock RPC's waiter key behind etcdctl's")
    with pytest.raises(grpc.FutureTimeoutError):
        pending.result(timeout=NEGATIVE_WINDOW)

    holder.interrupt()  # etcdctl closes its session: its key goes with the lease
    got = pending.result(timeout=WAIT)
    assert got.key == my_key
    assert [kv.key for kv in stubs.keys(b"lock2/")] == [my_key]
    # the lock's header is at least the revision that released the predecessor
    assert got.header.revision >= stubs.keys(b"lock2/")[0].create_revision + 1

    # Revoking the owner's lease releases the lock too.
    nxt = ctl("lock", "lock2")
    wait_for(lambda: len(stubs.keys(b"lock2/")) == 2, "etcdctl's waiter key")
    stubs.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=RPC_TIMEOUT)
    assert nxt.wait_lines(1)[:1] == [stubs.keys(b"lock2/")[0].key.decode()]
    nxt.interrupt()


def test_waiters_that_give_up_leave_the_queue(stubs: Stubs) -> None:
    first = stubs.grant()
    stubs.lock.Lock(lpb.LockRequest(name=b"q", lease=first), timeout=RPC_TIMEOUT)
    stubs.election.Campaign(epb.CampaignRequest(name=b"qe", lease=first, value=b"a"),
                            timeout=RPC_TIMEOUT)
    second = stubs.grant()
    lock = stubs.lock.Lock.future(lpb.LockRequest(name=b"q", lease=second), timeout=WAIT * 2)
    campaign = stubs.election.Campaign.future(
        epb.CampaignRequest(name=b"qe", lease=second, value=b"b"), timeout=WAIT * 2)
    wait_for(lambda: len(stubs.keys(b"q/")) == len(stubs.keys(b"qe/")) == 2, "the waiters' keys")
    lock.cancel()
    campaign.cancel()
    wait_for(lambda: len(stubs.keys(b"q/")) == len(stubs.keys(b"qe/")) == 1,
             "the cancelled waiters' keys to go")
    # A caller whose deadline passes while waiting leaves the queue too.
    code, details = rpc_error(lambda: stubs.lock.Lock(lpb.LockRequest(name=b"q", lease=second),
                                                      timeout=NEGATIVE_WINDOW))
    # the client's deadline, or the server's copy of it firing first (etcd then answers
    # UNKNOWN "context deadline exceeded")
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED or (
        code == grpc.StatusCode.UNKNOWN and "deadline exceeded" in details), (code, details)
    wait_for(lambda: len(stubs.keys(b"q/")) == 1, "the timed-out waiter's key to go")
    # Locking again with the holder's lease is a no-op that returns the same key.
    again = stubs.lock.Lock(lpb.LockRequest(name=b"q", lease=first), timeout=RPC_TIMEOUT)
    assert again.key == f"q/{first:x}".encode()


@pytest.mark.parametrize("kind", ["target", "etcd"])
def test_abandoned_calls_leave_no_watchers(kind: str, server_factory: ServerFactory) -> None:
    """Waiting Lock/Campaign calls and Observe streams each hold a watch on the member;
    callers that go away must not leave them behind."""
    metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
    proc = server_factory(kind, extra=["--listen-metrics-urls", metrics_url[:-len("/metrics")]])
    s = Stubs(proc)

    def watchers() -> int:
        with urllib.request.urlopen(metrics_url, timeout=RPC_TIMEOUT) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("etcd_debugging_mvcc_watcher_total "):
                    return int(float(line.split()[1]))
        raise AssertionError("no etcd_debugging_mvcc_watcher_total in /metrics")

    try:
        holder = s.grant()
        s.lock.Lock(lpb.LockRequest(name=b"w", lease=holder), timeout=RPC_TIMEOUT)
        s.election.Campaign(epb.CampaignRequest(name=b"w", lease=holder, value=b"v"),
                            timeout=RPC_TIMEOUT)
        baseline = watchers()
        calls: list[grpc.Future] = []
        for _ in range(3):
            lease = s.grant()
            calls.append(s.lock.Lock.future(lpb.LockRequest(name=b"w", lease=lease), timeout=WAIT * 2))
            calls.append(s.election.Campaign.future(
                epb.CampaignRequest(name=b"w", lease=lease, value=b"c"), timeout=WAIT * 2))
            stream = s.election.Observe(epb.LeaderRequest(name=b"w"), timeout=WAIT * 2)
            next(stream)
            calls.append(stream)  # type: ignore[arg-type]
        wait_for(lambda: watchers() >= baseline + 9, "a watch per waiter and observer")
        for c in calls:
            c.cancel()
        wait_for(lambda: watchers() == baseline, "the abandoned calls' watches to go")
    finally:
        s.channel.close()


@pytest.mark.parametrize("kind", ["target", "etcd"])
def test_member_with_waiting_calls_stops_promptly(kind: str, server_factory: ServerFactory) -> None:
    """Waiters cancelled by shutdown must not hold the process up on clean-up calls to
    the member that is going away."""
    proc = server_factory(kind)
    s = Stubs(proc)
    try:
        s.lock.Lock(lpb.LockRequest(name=b"sl"), timeout=RPC_TIMEOUT)
        s.election.Campaign(epb.CampaignRequest(name=b"se", value=b"1"), timeout=RPC_TIMEOUT)
        lock = s.lock.Lock.future(lpb.LockRequest(name=b"sl"), timeout=WAIT * 2)
        campaign = s.election.Campaign.future(epb.CampaignRequest(name=b"se", value=b"2"),
                                              timeout=WAIT * 2)
        wait_for(lambda: len(s.keys(b"sl/")) == len(s.keys(b"se/")) == 2, "both waiters' keys")
        started = time.monotonic()
        assert proc.stop(timeout=30) in (0, -signal.SIGTERM)  # etcd dies by the signal
        assert time.monotonic() - started < 5.0
        for call in (lock, campaign):
            assert call.exception(timeout=RPC_TIMEOUT) is not None
    finally:
        s.channel.close()


def test_lock_errors_match_etcd(stubs: Stubs) -> None:
    code, msg = rpc_error(lambda: stubs.lock.Lock(lpb.LockRequest(name=b"x", lease=0x1234),
                                                  timeout=RPC_TIMEOUT))
    assert (code, msg) == (grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found")
    code, msg = rpc_error(lambda: stubs.lock.Unlock(lpb.UnlockRequest(key=b""), timeout=RPC_TIMEOUT))
    assert (code, msg) == (grpc.StatusCode.UNKNOWN, "etcdserver: key is not provided")
    # Unlocking a key that is gone is not an error.
    stubs.lock.Unlock(lpb.UnlockRequest(key=b"x/none"), timeout=RPC_TIMEOUT)
    # Without a lease the lock gets a fresh one with the 60 s session TTL.
    got = stubs.lock.Lock(lpb.LockRequest(name=b"x"), timeout=RPC_TIMEOUT)
    (kv,) = stubs.keys(b"x/")
    assert got.key == kv.key == f"x/{kv.lease:x}".encode()
    ttl = stubs.lease.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=kv.lease), timeout=RPC_TIMEOUT)
    assert ttl.grantedTTL == 60


# --------------------------------------------------------------------------- election

def _observed(o: Ctl, n_pairs: int) -> list[tuple[str, str]]:
    lines = o.wait_lines(2 * n_pairs)
    return list(zip(lines[0::2], lines[1::2], strict=False))


def test_campaign_proclaim_resign_with_etcdctl_elect(stubs: Stubs, ctl: Callable[..., Ctl]) -> None:
    lease = stubs.grant()
    won = stubs.election.Campaign(epb.CampaignRequest(name=b"myelection", lease=lease, value=b"alpha"),
                                  timeout=RPC_TIMEOUT)
    leader = won.leader
    key = f"myelection/{lease:x}"
    assert (leader.name, leader.key, leader.lease) == (b"myelection", key.encode(), lease)
    assert leader.rev == won.header.revision == stubs.keys(b"myelection/")[0].create_revision

    observer = ctl("elect", "-l", "myelection")
    assert _observed(observer, 1) == [(key, "alpha")]
    stream = stubs.election.Observe(epb.LeaderRequest(name=b"myelection"), timeout=WAIT * 3)
    first = next(stream)
    assert (first.kv.key, first.kv.value) == (key.encode(), b"alpha")

    stubs.election.Proclaim(epb.ProclaimRequest(leader=leader, value=b"beta"), timeout=RPC_TIMEOUT)
    assert _observed(observer, 2)[1] == (key, "beta")
    assert next(stream).kv.value == b"beta"
    got = stubs.election.Leader(epb.LeaderRequest(name=b"myelection"), timeout=RPC_TIMEOUT)
    assert (got.kv.key, got.kv.value, got.kv.lease) == (key.encode(), b"beta", lease)

    candidate = ctl("elect", "myelection", "gamma")
    wait_for(lambda: len(stubs.keys(b"myelection/")) == 2, "etcdctl's candidate key")
    assert candidate.wait_lines(1, timeout=NEGATIVE_WINDOW) == [], "candidate won a held election"
    cand_key = stubs.keys(b"myelection/")[1].key.decode()

    # Resign with a key that is not the leader's changes nothing; with ours it hands over.
    stale = epb.LeaderKey(name=b"myelection", key=cand_key.encode(), rev=1, lease=lease)
    stubs.election.Resign(epb.ResignRequest(leader=stale), timeout=RPC_TIMEOUT)
    assert len(stubs.keys(b"myelection/")) == 2
    stubs.election.Resign(epb.ResignRequest(leader=leader), timeout=RPC_TIMEOUT)
    assert _observed(candidate, 1) == [(cand_key, "gamma")]
    assert _observed(observer, 3)[2] == (cand_key, "gamma")
    nxt = next(stream)
    assert (nxt.kv.key, nxt.kv.value) == (cand_key.encode(), b"gamma")
    got = stubs.election.Leader(epb.LeaderRequest(name=b"myelection"), timeout=RPC_TIMEOUT)
    assert (got.kv.key, got.kv.value) == (cand_key.encode(), b"gamma")

    # The former leader can no longer proclaim.
    code, msg = rpc_error(lambda: stubs.election.Proclaim(
        epb.ProclaimRequest(leader=leader, value=b"late"), timeout=RPC_TIMEOUT))
    assert (code, msg) == (grpc.StatusCode.UNKNOWN, "election: not leader")
    stream.cancel()
    candidate.interrupt()
    observer.kill()
    code, msg = rpc_error(lambda: stubs.election.Leader(epb.LeaderRequest(name=b"myelection"),
                                                        timeout=RPC_TIMEOUT))
    assert (code, msg) == (grpc.StatusCode.UNKNOWN, "election: no leader")


def test_campaign_waits_for_etcdctl_leader(stubs: Stubs, ctl: Callable[..., Ctl]) -> None:
    leader = ctl("elect", "e2", "first")
    (lead_key, value), = _observed(leader, 1)
    assert value == "first"
    lease = stubs.grant()
    pending = stubs.election.Campaign.future(
        epb.CampaignRequest(name=b"e2", lease=lease, value=b"second"), timeout=WAIT * 2)
    wait_for(lambda: len(stubs.keys(b"e2/")) == 2, "the Campaign RPC's candidate key")
    with pytest.raises(grpc.FutureTimeoutError):
        pending.result(timeout=NEGATIVE_WINDOW)
    observer = ctl("elect", "-l", "e2")
    assert _observed(observer, 1) == [(lead_key, "first")]

    leader.interrupt()
    won = pending.result(timeout=WAIT)
    assert won.leader.key == f"e2/{lease:x}".encode()
    assert _observed(observer, 2)[1] == (won.leader.key.decode(), "second")


def test_election_errors_match_etcd(stubs: Stubs) -> None:
    unknown = grpc.StatusCode.UNKNOWN
    assert rpc_error(lambda: stubs.election.Leader(epb.LeaderRequest(name=b"none"),
                                                   timeout=RPC_TIMEOUT)) == (unknown, "election: no leader")
    missing = (unknown, '"leader" field must be provided')
    assert rpc_error(lambda: stubs.election.Proclaim(epb.ProclaimRequest(value=b"v"),
                                                     timeout=RPC_TIMEOUT)) == missing
    assert rpc_error(lambda: stubs.election.Resign(epb.ResignRequest(), timeout=RPC_TIMEOUT)) == missing
    assert rpc_error(lambda: stubs.election.Campaign(
        epb.CampaignRequest(name=b"e3", lease=0x999, value=b"v"), timeout=RPC_TIMEOUT)) == (
        unknown, "etcdserver: requested lease not found")

    lease = stubs.grant()
    won = stubs.election.Campaign(epb.CampaignRequest(name=b"e3", lease=lease, value=b"v1"),
                                  timeout=RPC_TIMEOUT)
    not_leader = (unknown, "election: not leader")
    for bad in (epb.LeaderKey(name=b"e3", key=b"e3/other", rev=won.leader.rev, lease=lease),
                epb.LeaderKey(name=b"e3", key=won.leader.key, rev=won.leader.rev + 1, lease=lease)):
        req = epb.ProclaimRequest(leader=bad, value=b"x")
        assert rpc_error(partial(stubs.election.Proclaim, req, timeout=RPC_TIMEOUT)) == not_leader
    # Campaigning again on the same lease keeps the candidacy and proclaims the new value.
    again = stubs.election.Campaign(epb.CampaignRequest(name=b"e3", lease=lease, value=b"v2"),
                                    timeout=RPC_TIMEOUT)
    assert (again.leader.key, again.leader.rev) == (won.leader.key, won.leader.rev)
    got = stubs.election.Leader(epb.LeaderRequest(name=b"e3"), timeout=RPC_TIMEOUT)
    assert got.kv.value == b"v2" and got.kv.version == 2


# ------------------------------------------------------------------- the guide's example

def test_readme_example_runs() -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "lock-election.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", guide, re.S)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"docs/lock-election.md example failed:\n{r.stdout}\n{r.stderr}"
    for promised in re.findall(r"print\(.*\)\s+# (\S+)", code):
        assert promised in r.stdout.split(), (
            f"docs/lock-election.md example did not print {promised!r}:\n{r.stdout}")
