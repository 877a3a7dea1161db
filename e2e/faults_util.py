"""Fault injection for e2e tests: a datastore cluster whose peer traffic goes through
controllable TCP proxies, a nemesis, and the invariants checked after healing.

Network layout. Member i listens for peers on its real port P_i, but advertises (and is
named in everyone's ``--initial-cluster`` by) the address of proxy i, which forwards to
P_i. So every raft connection *to* member i, from any member, passes through proxy i;
proxy i identifies which member dialed (see ``datastore.testing.tcpproxy``), so a single
inbound proxy per member can cut single directed links.

Faults (what each does):

``isolate(i)``
    Full partition of i: proxy i refuses every connection (nobody reaches i) and every
    other proxy refuses connections dialed by i (i reaches nobody). Existing connections
    are reset. Client traffic to i is *not* cut: clients bound to i keep talking to a
    member that cannot reach a quorum (their writes and linearizable reads must time out
    or fail, never succeed).
``block_inbound(i)``
    Asymmetric: nobody reaches i, but i's own messages still reach the others (a leader
    keeps sending heartbeats nobody can answer; check-quorum must depose it).
``cut(i, j)``
    One directed link i -> j is cut (raft messages i sends to j are lost).
``delay(i, s)``
    Every byte to/from member i over peer links is held back ``s`` seconds.
``kill(i)`` / ``restart(i)``
    SIGKILL and relaunch on the same data dir and ports (crash-recovery).
``pause(i)`` / ``resume(i)``
    SIGSTOP / SIGCONT: a process that stops taking steps (GC pause, VM freeze), whose
    sockets stay open.
``heal()``
    Lift all network faults, resume paused and restart killed members.

Membership changes (``add_learner``, ``promote``, ``remove``) go through the Cluster RPCs
of a healthy member, with the new member's peer traffic behind its own proxy like the
others'. Indexes are never reused: ``procs`` keeps removed members (which exit, as
etcd's do), ``members`` / ``voters`` list the current ones. The nemesis changes
membership *while* a fault is active (add a learner or remove a voter), and promotes a
pending learner once the fault is healed (etcd's strict reconfig check refuses to add a
voter while any voter is unreachable).

Limitations: the proxies only see peer (raft) traffic; clock faults, disk faults (fsync
lies, torn writes) and client-side network faults are not modelled. Message *reordering*
within a stream is impossible over TCP, and loss is all-or-nothing per connection
(reset/blackhole), not per message.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cluster_util import FAST, status, wait_for

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import ServerProc, datastore_proc, free_port
from datastore.testing.tcpproxy import TcpProxy


class FaultCluster:
    """N datastore members whose peer links each pass through a TcpProxy."""

    def __init__(self, base: Path, n: int = 3, extra: tuple[str, ...] = ()) -> None:
        self.base = base
        self.extra = extra
        self.names = [f"m{i}" for i in range(n)]
        ports = [(free_port(), free_port()) for _ in range(n)]
        self.proxies = [TcpProxy(pp, name=f"proxy-m{i}", identify=self._pids)
                        for i, (_, pp) in enumerate(ports)]
        spec = ",".join(f"{name}={px.url}" for name, px in zip(self.names, self.proxies, strict=True))
        self.procs: list[ServerProc] = [
            datastore_proc(base, self.names[i], client_port=cp, peer_port=pp, initial_cluster=spec,
                           # advertised peer URL = the proxy (a later flag overrides the earlier)
                           extra=[*FAST, *extra, "--initial-advertise-peer-urls", self.proxies[i].url])
            for i, (cp, pp) in enumerate(ports)]
        self.paused: set[int] = set()
        self.removed: set[int] = set()   # removed from the cluster (their process exits)
        self.removing: set[int] = set()  # a MemberRemove was sent; the outcome is open
        self.learners: set[int] = set()
        self.ids: dict[int, int] = {}    # index -> member ID
        self.log: list[str] = []  # what the nemesis did, with times (for failure reports)
        self._t0 = time.monotonic()

    def _pids(self) -> dict[int, str]:
        return {p.popen.pid: p.name for p in self.procs if p.popen is not None and p.popen.poll() is None}

    def note(self, what: str) -> None:
        line = f"{time.monotonic() - self._t0:7.2f}s {what}"
        self.log.append(line)
        print(line, flush=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultCluster:
        for px in self.proxies:
            px.start()
        for p in self.procs:
            p.launch()
        for p in self.procs:
            p.wait_ready(30)
        self.wait_leader()
        for i, p in enumerate(self.procs):
            self.ids[i] = status(p).header.member_id
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        for px in self.proxies:
            px.stop()

    @property
    def members(self) -> list[int]:
        """Indexes of the current members (voters and learners)."""
        return [i for i in range(len(self.procs)) if i not in self.removed]

    @property
    def voters(self) -> list[int]:
        return [i for i in self.members if i not in self.learners and i not in self.removing]

    def is_running(self, i: int) -> bool:
        p = self.procs[i].popen
        return p is not None and p.poll() is None

    # -- observation -----------------------------------------------------------------------

    def leader_index(self, among: list[int] | None = None) -> int | None:
        """Index of the leader that every given (default: running, unpaused) member agrees on."""
        idx = among if among is not None else [i for i in self.members if self.is_running(i)
                                               and i not in self.paused and i not in self.removing]
        leaders = set()
        ids: dict[int, int] = {}
        for i in idx:
            try:
                st = status(self.procs[i])
            except grpc.RpcError:
                return None
            leaders.add(st.leader)
            ids[st.header.member_id] = i
        if len(leaders) != 1 or 0 in leaders:
            return None
        lid = leaders.pop()
        return ids.get(lid)

    def wait_leader(self, among: list[int] | None = None, timeout: float = 30.0) -> int:
        return wait_for(lambda: self._leader_plus1(among), timeout, "one agreed leader") - 1

    def _leader_plus1(self, among: list[int] | None) -> int | None:
        i = self.leader_index(among)
        return None if i is None else i + 1

    def converged(self) -> tuple[int, int] | None:
        """(applied index, revision) when all members report the same ones, else None."""
        sts = [status(self.procs[i]) for i in self.members]
        applied = {s.raftAppliedIndex for s in sts}
        revs = {s.header.revision for s in sts}
        leaders = {s.leader for s in sts}
        if len(applied) == 1 and len(revs) == 1 and len(leaders) == 1 and 0 not in leaders:
            return applied.pop(), revs.pop()
        return None

    def wait_converged(self, timeout: float = 60.0) -> tuple[int, int]:
        """Wait until all members agree on applied index and revision, twice in a row."""
        def stable() -> tuple[int, int] | None:
            a = self.converged()
            return a if a is not None and self.converged() == a else None
        return wait_for(stable, timeout, "all members converge on applied index")

    # -- faults ----------------------------------------------------------------------------

    def isolate(self, i: int, mode: str = "reset") -> None:
        self.note(f"isolate m{i} ({mode})")
        self.proxies[i].block(mode)
        for j, px in enumerate(self.proxies):
            if j != i:
                px.block_from([self.names[i]], mode)

    def block_inbound(self, i: int, mode: str = "reset") -> None:
        self.note(f"block inbound of m{i} ({mode})")
        self.proxies[i].block(mode)

    def cut(self, i: int, j: int, mode: str = "reset") -> None:
        self.note(f"cut m{i} -> m{j} ({mode})")
        self.proxies[j].block_from([self.names[i]], mode)

    def delay(self, i: int, seconds: float) -> None:
        self.note(f"delay peer traffic to m{i} by {seconds * 1000:.0f} ms")
        self.proxies[i].set_delay(seconds)

    def heal_network(self) -> None:
        self.note("heal network")
        for px in self.proxies:
            px.heal()

    def kill(self, i: int) -> None:
        self.note(f"kill -9 m{i}")
        self.paused.discard(i)
        self.procs[i].kill()

    def restart(self, i: int) -> None:
        self.note(f"restart m{i}")
        self.procs[i].launch()
        self.procs[i].wait_ready(30)

    def pause(self, i: int) -> None:
        self.note(f"SIGSTOP m{i}")
        self.paused.add(i)
        self.procs[i].pause()

    def resume(self, i: int) -> None:
        self.note(f"SIGCONT m{i}")
        self.paused.discard(i)
        self.procs[i].resume()

    def heal(self) -> None:
        self.heal_network()
        for i in sorted(self.paused):
            self.resume(i)
        for i in self.members:
            if not self.is_running(i) and i not in self.removing:
                self.restart(i)

    # -- membership ------------------------------------------------------------------------

    def _cluster_rpc(self, via: int, method: str, req: Any, timeout: float) -> Any:
        with grpc.insecure_channel(self.procs[via].endpoint) as ch:
            return getattr(rpc_pb2_grpc.ClusterStub(ch), method)(req, timeout=timeout)

    def member_list(self, via: int) -> list[pb.Member]:
        return list(self._cluster_rpc(via, "MemberList", pb.MemberListRequest(), 5).members)

    def add_learner(self, via: int, deadline: float) -> int:
        """MemberAdd(learner) through member ``via``, then start the new member behind its
        own proxy; returns its index. A timed-out add may still commit: the member list
        (matched by peer URL) decides."""
        i = len(self.procs)
        name = f"m{i}"
        cp, pp = free_port(), free_port()
        px = TcpProxy(pp, name=f"proxy-{name}", identify=self._pids).start()
        self.proxies.append(px)
        self.note(f"member add --learner {name} (via m{via})")
        mid = 0
        while not mid:
            try:
                mid = self._cluster_rpc(via, "MemberAdd", pb.MemberAddRequest(
                    peerURLs=[px.url], isLearner=True), 10).member.ID
            except grpc.RpcError as e:
                self.note(f"member add {name}: {describe(e)}")
                with contextlib.suppress(grpc.RpcError):
                    mid = next((m.ID for m in self.member_list(via) if px.url in m.peerURLs), 0)
                if not mid and time.monotonic() > deadline:
                    raise
                if not mid:
                    time.sleep(0.2)  # retry pacing
        spec = ",".join([*(f"{self.names[j]}={self.proxies[j].url}" for j in self.members),
                         f"{name}={px.url}"])
        proc = datastore_proc(self.base, name, client_port=cp, peer_port=pp, initial_cluster=spec,
                              state="existing",
                              extra=[*FAST, *self.extra, "--initial-advertise-peer-urls", px.url])
        self.names.append(name)
        self.procs.append(proc)
        self.learners.add(i)
        self.ids[i] = mid
        while True:
            proc.launch()
            try:
                proc.wait_ready(60)
                break
            except RuntimeError as e:
                # It learns the member list from the first peer that answers, which may
                # not have applied the add yet (a cut link, a lagging member): etcd's
                # member exits the same way, and the operator starts it again.
                if "add it first" not in str(e) or time.monotonic() > deadline + 60:
                    raise
                self.note(f"{name} saw a member list without itself; starting it again")
                time.sleep(0.5)  # retry pacing
        self.note(f"learner {name} started ({mid:x})")
        return i

    def promote(self, i: int, via: int, deadline: float) -> bool:
        """MemberPromote until it succeeds (the learner must catch up and, under strict
        reconfig, every voter be connected); False if the deadline passed first."""
        self.note(f"member promote m{i} (via m{via})")
        while True:
            try:
                self._cluster_rpc(via, "MemberPromote", pb.MemberPromoteRequest(ID=self.ids[i]), 10)
                break
            except grpc.RpcError as e:
                if (e.details() or "").removeprefix(
                        "etcdserver: ") == "can only promote a learner member":
                    break  # an earlier, timed-out promote committed
                if time.monotonic() > deadline:
                    self.note(f"promote m{i} not done yet: {describe(e)}")
                    return False
                time.sleep(0.2)  # retry pacing: catching up / health interval
        self.learners.discard(i)
        self.note(f"m{i} promoted")
        return True

    def remove(self, i: int, via: int, deadline: float) -> bool:
        """MemberRemove until it succeeds or the member is gone; then wait for the removed
        process to exit (as etcd's does). False if the deadline passed first."""
        self.note(f"member remove m{i} (via m{via})")
        self.removing.add(i)
        while True:
            try:
                self._cluster_rpc(via, "MemberRemove", pb.MemberRemoveRequest(ID=self.ids[i]), 10)
                break
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    break  # an earlier, timed-out remove committed
                if time.monotonic() > deadline:
                    self.note(f"remove m{i} not done yet: {describe(e)}")
                    return False
                time.sleep(0.2)  # retry pacing: strict reconfig refuses while unhealthy
        self.removing.discard(i)
        self.removed.add(i)
        self.learners.discard(i)
        self.paused.discard(i)
        p = self.procs[i].popen
        try:
            if p is not None:
                p.wait(30)
            self.note(f"m{i} removed and exited ({None if p is None else p.returncode})")
        except subprocess.TimeoutExpired:
            # it never heard of its removal (etcd's member can linger the same way)
            self.note(f"m{i} removed but still running: stopping it")
            self.procs[i].stop()
        return True


class Nemesis:
    """Runs a seeded schedule of faults on a thread until stopped, healing after each.

    The schedule uses time intervals (how long a fault lasts, how long the cluster runs
    healthy between faults); waiting for the cluster to recover is a polled condition.
    """

    FAULTS = ("kill_leader", "pause_follower", "isolate", "isolate_leader", "block_inbound_leader",
              "cut_leader_link", "delay")

    def __init__(self, cluster: FaultCluster, rng: random.Random, rounds: int,
                 faults: tuple[str, ...] = FAULTS, duration: tuple[float, float] = (0.8, 2.0),
                 calm: tuple[float, float] = (0.5, 1.5), membership: bool = False) -> None:
        self.c = cluster
        self.membership = membership
        self.member_changes: list[str] = []  # completed membership changes
        self.rng = rng
        self.rounds = rounds
        self.faults = faults
        self.duration = duration
        self.calm = calm
        self.stop = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.done_rounds = 0
        self.thread = threading.Thread(target=self._run, name="nemesis", daemon=True)

    def start(self) -> Nemesis:
        self.thread.start()
        return self

    def join(self, timeout: float = 120.0) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError("nemesis did not finish")
        if self.error is not None:
            raise AssertionError(f"nemesis failed: {self.error!r}") from self.error

    def _wait(self, span: tuple[float, float]) -> None:
        self.stop.wait(self.rng.uniform(*span))  # the fault schedule's time interval

    def _run(self) -> None:
        try:
            for k in range(self.rounds):
                if self.stop.is_set():
                    break
                self._wait(self.calm)
                fault = self.faults[k % len(self.faults)] if k < len(self.faults) else \
                    self.rng.choice(self.faults)
                self._one(fault)
                self.done_rounds += 1
        except BaseException as e:  # reported by join()
            self.error = e
        finally:
            try:
                self.c.heal()
            except BaseException as e:
                self.error = self.error or e
            self.done.set()

    def _one(self, fault: str) -> None:
        c = self.c
        members = c.members
        leader = c.wait_leader(timeout=30)
        others = [i for i in members if i != leader]
        if fault == "kill_leader":
            c.kill(leader)
            c.wait_leader(others, timeout=30)
            self._during({leader})
            c.restart(leader)
        elif fault == "pause_follower":
            f = self.rng.choice(others)
            c.pause(f)
            self._during({f})
            c.resume(f)
        elif fault in ("isolate", "isolate_leader"):
            victim = leader if fault == "isolate_leader" else self.rng.choice(members)
            c.isolate(victim, self.rng.choice(("reset", "reset", "blackhole")))
            rest = [i for i in members if i != victim]
            c.wait_leader(rest, timeout=30)  # the majority side elects (or keeps) a leader
            self._during({victim})
            c.heal_network()
        elif fault == "block_inbound_leader":
            c.block_inbound(leader)
            c.wait_leader(others, timeout=30)  # check-quorum deposes the old leader
            self._during({leader})
            c.heal_network()
        elif fault == "cut_leader_link":
            f = self.rng.choice(others)
            c.cut(leader, f)
            self._during({leader, f})
            c.heal_network()
        elif fault == "delay":
            victim = self.rng.choice(members)
            c.delay(victim, self.rng.uniform(0.02, 0.15))
            self._during(set())
            c.heal_network()
        else:
            raise ValueError(fault)
        c.wait_leader(timeout=30)
        if self.membership:
            self._finish_membership()

    def _during(self, faulted: set[int]) -> None:
        """The fault's duration; with membership changes, one change happens in it: a
        learner is added when there are 3 voters, a healthy voter (maybe the leader) is
        removed when there are 4. A change the fault blocks is finished after the heal."""
        t_end = time.monotonic() + self.rng.uniform(*self.duration)
        c = self.c
        if self.membership and not c.learners and not c.removing:
            healthy = [i for i in c.voters if i not in faulted and c.is_running(i)]
            via = self._via(healthy)
            if len(c.voters) <= 3:
                i = c.add_learner(via, deadline=time.monotonic() + 20)
                self.member_changes.append(f"add learner m{i}")
            else:
                victim = self.rng.choice(healthy)
                if victim == via:  # a leader can remove itself; then it steps down
                    self.member_changes.append(f"remove leader m{victim}")
                else:
                    self.member_changes.append(f"remove m{victim}")
                c.remove(victim, via, deadline=time.monotonic() + 10)
        self.stop.wait(max(0.0, t_end - time.monotonic()))

    def _via(self, healthy: list[int]) -> int:
        """Where to send a membership change: the leader a healthy member follows, when
        it can take requests (a cut link does not stop it), else a healthy member."""
        c = self.c
        by_id = {mid: i for i, mid in c.ids.items()}

        def find() -> int | None:
            for i in healthy:
                j = by_id.get(status(c.procs[i]).leader)
                if j is not None and j in c.members and c.is_running(j) and j not in c.paused:
                    return j + 1
            return None
        return wait_for(find, 30, "a leader to send the membership change to") - 1

    def _finish_membership(self) -> None:
        """After healing: promote a pending learner, finish a pending removal."""
        c = self.c
        for i in sorted(c.removing):
            via = c.wait_leader(timeout=30)
            if not c.remove(i, via, deadline=time.monotonic() + 60):
                raise AssertionError(f"member remove of m{i} never succeeded")
        for i in sorted(c.learners):
            via = c.wait_leader(timeout=30)
            if not c.promote(i, via, deadline=time.monotonic() + 60):
                raise AssertionError(f"member promote of m{i} never succeeded")
            self.member_changes.append(f"promote m{i}")
        c.wait_leader(timeout=30)


def classify(e: grpc.RpcError) -> bool:
    """True when an error means the request certainly did not take effect.

    Definite: argument errors, and the client library failing to connect at all (the
    request never left this process: gRPC's "failed to connect to all addresses").
    Everything else is indeterminate -- timeouts, connection reset mid-call, and every
    server UNAVAILABLE ("no leader", "leader changed", "request timed out"): a proposal
    made or forwarded before the error may still commit.
    """
    if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return True
    return e.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect to all addresses" in (
        e.details() or "")


def describe(e: Any) -> str:
    if isinstance(e, grpc.RpcError):
        return f"{e.code().name}: {e.details()}"
    return repr(e)


def retry(fn: Callable[[], Any], timeout: float = 30.0, what: str = "request") -> Any:
    """Call ``fn`` until it does not raise grpc.RpcError (a polled condition)."""
    box: list[Any] = []

    def once() -> bool:
        box.append(fn())
        return True
    wait_for(once, timeout, what)
    return box[-1]
