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

Limitations: the proxies only see peer (raft) traffic; clock faults, disk faults (fsync
lies, torn writes) and client-side network faults are not modelled. Message *reordering*
within a stream is impossible over TCP, and loss is all-or-nothing per connection
(reset/blackhole), not per message.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cluster_util import FAST, status, wait_for

from datastore.testing.procs import ServerProc, datastore_proc, free_port
from datastore.testing.tcpproxy import TcpProxy


class FaultCluster:
    """N datastore members whose peer links each pass through a TcpProxy."""

    def __init__(self, base: Path, n: int = 3, extra: tuple[str, ...] = ()) -> None:
        self.base = base
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
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        for px in self.proxies:
            px.stop()

    def is_running(self, i: int) -> bool:
        p = self.procs[i].popen
        return p is not None and p.poll() is None

    # -- observation -----------------------------------------------------------------------

    def leader_index(self, among: list[int] | None = None) -> int | None:
        """Index of the leader that every given (default: running, unpaused) member agrees on."""
        idx = among if among is not None else [i for i in range(len(self.procs))
                                               if self.is_running(i) and i not in self.paused]
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
        sts = [status(p) for p in self.procs]
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
        for i in range(len(self.procs)):
            if not self.is_running(i):
                self.restart(i)


class Nemesis:
    """Runs a seeded schedule of faults on a thread until stopped, healing after each.

    The schedule uses time intervals (how long a fault lasts, how long the cluster runs
    healthy between faults); waiting for the cluster to recover is a polled condition.
    """

    FAULTS = ("kill_leader", "pause_follower", "isolate", "isolate_leader", "block_inbound_leader",
              "cut_leader_link", "delay")

    def __init__(self, cluster: FaultCluster, rng: random.Random, rounds: int,
                 faults: tuple[str, ...] = FAULTS, duration: tuple[float, float] = (0.8, 2.0),
                 calm: tuple[float, float] = (0.5, 1.5)) -> None:
        self.c = cluster
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
        n = len(c.procs)
        leader = c.wait_leader(timeout=30)
        others = [i for i in range(n) if i != leader]
        if fault == "kill_leader":
            c.kill(leader)
            c.wait_leader(others, timeout=30)
            self._wait(self.duration)
            c.restart(leader)
        elif fault == "pause_follower":
            f = self.rng.choice(others)
            c.pause(f)
            self._wait(self.duration)
            c.resume(f)
        elif fault in ("isolate", "isolate_leader"):
            victim = leader if fault == "isolate_leader" else self.rng.choice(range(n))
            c.isolate(victim, self.rng.choice(("reset", "reset", "blackhole")))
            rest = [i for i in range(n) if i != victim]
            c.wait_leader(rest, timeout=30)  # the majority side elects (or keeps) a leader
            self._wait(self.duration)
            c.heal_network()
        elif fault == "block_inbound_leader":
            c.block_inbound(leader)
            c.wait_leader(others, timeout=30)  # check-quorum deposes the old leader
            self._wait(self.duration)
            c.heal_network()
        elif fault == "cut_leader_link":
            f = self.rng.choice(others)
            c.cut(leader, f)
            self._wait(self.duration)
            c.heal_network()
        elif fault == "delay":
            victim = self.rng.choice(range(n))
            c.delay(victim, self.rng.uniform(0.02, 0.15))
            self._wait(self.duration)
            c.heal_network()
        else:
            raise ValueError(fault)
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
