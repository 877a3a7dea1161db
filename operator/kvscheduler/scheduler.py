"""The list-watch scheduler: informers -> queue -> filter/score -> fenced bind.

Every replica runs informers on ``/registry/minions/`` and ``/registry/pods/`` so its cache
is warm, and campaigns in an Election. Only the leader decides and binds. Each bind is one
Txn that compares

* the pod's ``mod_revision`` with the revision the decision was made from (the binding
  subresource's optimistic concurrency: a pod is never bound twice, whoever races), and
* the ``create_revision`` of our election key with the one we won with (fencing: a leader
  that was paused or partitioned past its lease, and has been replaced, can no longer write),

and on success writes the pod with ``spec.nodeName`` and ``PodScheduled=True``. A pod that
fits nowhere gets ``PodScheduled=False`` / ``Unschedulable`` with kube-scheduler's message
(written once per distinct message, also fenced), and waits until a node is added or changes
or a pod goes away.

Decisions are made one at a time; the bind RPCs run concurrently. The chosen node is charged
in the cache the moment the decision is made (assume), so in-flight binds never let later
decisions overcommit a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.client import Client
from datastore.client.errors import ClientError
from datastore.client.recipes import Election, Informer, Session
from datastore.client.txn import Compare, op_get, op_put
from datastore.logsetup import text_field
from kvscheduler import objects as obj
from kvscheduler.algorithm import schedule
from kvscheduler.cache import Cache, PodState
from kvscheduler.metrics import Attempts
from kvscheduler.workqueue import SchedulingQueue

log = logging.getLogger("kvscheduler")

ELECTION_PREFIX = "/kvscheduler/leader"
SCHEDULED_BY = "kvscheduler.datastore.io/scheduled-by"
INFLIGHT_GRACE = 2.0  # seconds in-flight writes get to finish when a term ends
RETRY_INITIAL, RETRY_MAX = 0.1, 2.0  # backoff of a bind whose outcome is unknown


def logkv(level: int, event: str, **fields: Any) -> None:
    """One structured log line: ``event key=value ...`` (values JSON-quoted when needed)."""
    if log.isEnabledFor(level):
        parts = [event] + [text_field(k, v) for k, v in fields.items()]
        log.log(level, " ".join(parts))


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Stats:
    """Counters, exposed in log lines and to the demo's progress bar."""

    decisions: int = 0
    binds: int = 0
    bind_conflicts: int = 0
    bind_errors: int = 0
    fenced: int = 0
    unschedulable_writes: int = 0
    terms: int = 0


class _LostLeadership(Exception):
    pass


class Scheduler:
    def __init__(self, client: Client, *, scheduler_name: str = obj.DEFAULT_SCHEDULER,
                 identity: str | None = None, election: str = ELECTION_PREFIX, lease_ttl: int = 10,
                 max_inflight: int = 32, clock: Callable[[], float] = time.monotonic) -> None:
        self.c = client
        self.scheduler_name = scheduler_name
        self.identity = identity or default_identity()
        self.election_prefix = election
        self.lease_ttl = lease_ttl
        self.max_inflight = max_inflight
        self.cache = Cache()
        self.queue = SchedulingQueue(clock)
        self.stats = Stats()
        self.attempts = Attempts()  # scheduler_schedule_attempts_total and its durations
        self.leading = asyncio.Event()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # any informer event (for _catch_up)
        self._inflight: set[asyncio.Task[None]] = set()
        self._lost: asyncio.Event = asyncio.Event()
        self._fence: tuple[bytes, int] | None = None
        self.nodes_inf = Informer(client, obj.NODE_PREFIX, on_add=self._node_set, on_update=self._node_update,
                                  on_delete=self._node_delete)
        self.pods_inf = Informer(client, obj.POD_PREFIX, on_add=self._pod_set, on_update=self._pod_update,
                                 on_delete=self._pod_delete)

    # -- informer handlers (keep the cache and the queue current on every replica) --------------

    def _node_set(self, kv: Any) -> None:
        self._changed.set()
        node = obj.decode_node(kv.value)
        self.cache.set_node(node)
        self._requeue_parked("node changed", node.metadata.name)

    def _node_update(self, old: Any, new: Any) -> None:
        self._node_set(new)

    def _node_delete(self, kv: Any) -> None:
        self.cache.remove_node(kv.key.decode().removeprefix(obj.NODE_PREFIX))

    def _pod_set(self, kv: Any) -> None:
        self._changed.set()
        key = kv.key.decode()
        pod = obj.decode_pod(kv.value)
        old = self.cache.pods.get(key)
        if old is not None and old.mod_revision > kv.mod_revision:
            return  # already saw a newer version (re-read after a bind conflict)
        st = self.cache.set_pod(key, pod, kv.mod_revision, bytes(kv.value))
        if self.is_pending(pod):
            # Our own status write (or any change that leaves the spec as it was) keeps a
            # parked pod parked; anything else may change the outcome.
            if key in self.queue.unschedulable and old is not None and old.pod.spec == pod.spec:
                return
            self.queue.add(key)
            self._wake.set()
        else:
            self.queue.remove(key)
            if old is not None and old.placed_on and st.placed_on is None:
                self._requeue_parked("pod finished", key)  # e.g. it Succeeded: resources freed

    def _pod_update(self, old: Any, new: Any) -> None:
        self._pod_set(new)

    def _pod_delete(self, kv: Any) -> None:
        self._forget_pod(kv.key.decode())

    def _forget_pod(self, key: str) -> None:
        old = self.cache.remove_pod(key)
        self.queue.remove(key)
        if old is not None and old.placed_on:
            self._requeue_parked("pod deleted", key)

    def _requeue_parked(self, why: str, what: str) -> None:
        n = self.queue.move_all_unschedulable()
        if n:
            logkv(logging.INFO, "requeue_unschedulable", reason=why, object=what, pods=n)
            self._wake.set()

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    def is_pending(self, pod: k8s.V1Pod) -> bool:
        return (not pod.spec.node_name and obj.scheduler_name(pod) == self.scheduler_name
                and not obj.is_terminal(pod) and not pod.metadata.deletion_timestamp)

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set: informers always, scheduling whenever we lead."""
        stop = stop or asyncio.Event()
        await self.nodes_inf.start()
        await self.pods_inf.start()
        try:
            synced = asyncio.ensure_future(self._wait_synced())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({synced, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not synced.done():  # stopped before the first list (say, refused by auth)
                synced.cancel()
                return
            synced.result()
            logkv(logging.INFO, "informers_synced", nodes=len(self.cache.nodes), pods=len(self.cache.pods),
                  identity=self.identity)
            stopper = asyncio.ensure_future(stop.wait())
            try:
                while not stop.is_set():
                    term = asyncio.ensure_future(self._term())
                    await asyncio.wait({term, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if not term.done():
                        term.cancel()
                    try:
                        await term
                    except asyncio.CancelledError:
                        if stop.is_set():
                            break
                        raise
                    except Exception as e:  # a replica must outlive any one failed term
                        logkv(logging.WARNING, "term_error", error=f"{type(e).__name__}: {e}",
                              hint="campaigning again; check that the --endpoints are reachable")
                        await asyncio.wait({stopper}, timeout=1.0)  # back off before campaigning again
            finally:
                stopper.cancel()
        finally:
            await self.nodes_inf.stop()
            await self.pods_inf.stop()

    async def _wait_synced(self) -> None:
        await self.nodes_inf.wait_synced()
        await self.pods_inf.wait_synced()

    async def _term(self) -> None:
        """Campaign; once elected, schedule until the session is lost or a bind is fenced."""
        session = Session(self.c, ttl=self.lease_ttl)
        await session.__aenter__()
        try:
            election = Election(session, self.election_prefix)
            logkv(logging.INFO, "campaign", identity=self.identity, lease=hex(session.lease_id))
            await election.campaign(self.identity.encode())
            self.stats.terms += 1
            self._fence = (bytes(election.key), int(election.rev))
            self._lost = asyncio.Event()
            logkv(logging.INFO, "elected", identity=self.identity, key=election.key.decode(),
                  rev=election.rev)
            await self._catch_up()
            self.leading.set()
            try:
                await self._lead(session)
                logkv(logging.WARNING, "leadership_lost", identity=self.identity,
                      reason="bind fenced" if self._lost.is_set() else "session lease lost")
            finally:
                self.leading.clear()
                # Let binds already sent report their outcome (applied, conflict or fenced)
                # for a short while; cancel what is left.
                if self._inflight:
                    await asyncio.wait(set(self._inflight), timeout=INFLIGHT_GRACE)
                for t in list(self._inflight):
                    t.cancel()
                await asyncio.gather(*self._inflight, return_exceptions=True)
                self.cache.forget_all()
            if not session.lost.is_set():
                try:
                    await election.resign()
                except ClientError:
                    pass
        finally:
            try:
                await session.close()
            except Exception as e:  # the lease may be gone already; it expires on its own
                logkv(logging.INFO, "session_close_failed", error=f"{type(e).__name__}: {e}")

    async def _catch_up(self) -> None:
        """Before the first decision, let the pod cache reach the newest pod write, so binds
        the previous leader made are charged to their nodes (else we could overcommit)."""
        resp = await self.c.get(obj.POD_PREFIX, prefix=True, keys_only=True, limit=1,
                                sort_order=rpc.RangeRequest.DESCEND, sort_target=rpc.RangeRequest.MOD)
        target = resp.kvs[0].mod_revision if resp.kvs else 0
        nresp = await self.c.get(obj.NODE_PREFIX, prefix=True, keys_only=True, limit=1,
                                 sort_order=rpc.RangeRequest.DESCEND, sort_target=rpc.RangeRequest.MOD)
        ntarget = nresp.kvs[0].mod_revision if nresp.kvs else 0
        while self.pods_inf.revision < target or self.nodes_inf.revision < ntarget:
            # Handlers set _changed; the informer bumps its revision right after, hence the timeout.
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.05)
        self.queue.clear()
        for key, st in self.cache.pods.items():
            if self.is_pending(st.pod):
                self.queue.add(key)

    async def _lead(self, session: Session) -> None:
        lost = asyncio.ensure_future(session.lost.wait())
        fenced = asyncio.ensure_future(self._lost.wait())
        sem = asyncio.Semaphore(self.max_inflight)
        try:
            while not (session.lost.is_set() or self._lost.is_set()):
                key = self.queue.pop()
                if key is None:
                    self._wake.clear()
                    wait = self.queue.next_ready_in()
                    waker = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({waker, lost, fenced}, timeout=wait,
                                       return_when=asyncio.FIRST_COMPLETED)
                    waker.cancel()
                    continue
                await sem.acquire()
                if session.lost.is_set() or self._lost.is_set():
                    sem.release()
                    self.queue.add(key)
                    break
                if not self._decide(key, sem):
                    sem.release()
        finally:
            lost.cancel()
            fenced.cancel()

    # -- one decision -----------------------------------------------------------------------------

    def _decide(self, key: str, sem: asyncio.Semaphore) -> bool:
        """Decide one pod; returns True when a write task took over the semaphore slot."""
        st = self.cache.pods.get(key)
        if st is None or not self.is_pending(st.pod) or st.assumed is not None:
            return False
        self.stats.decisions += 1
        t0 = time.perf_counter()
        try:
            d = schedule(st.pod, self.cache.node_infos())
        except Exception:
            self.attempts.done("error", time.perf_counter() - t0)
            raise
        if d.node is not None:
            self.cache.assume(key, d.node)
            self._spawn(self._bind(key, st, d.node, t0), sem)
            return True
        self.attempts.done("unschedulable", time.perf_counter() - t0)
        self.queue.park_unschedulable(key)
        cond = obj.pod_condition(st.pod, "PodScheduled")
        if cond is not None and cond.status == "False" and cond.message == d.message:
            return False  # already says so: no write
        self._spawn(self._mark_unschedulable(key, st, d.message), sem)
        return True

    def _spawn(self, coro: Any, sem: asyncio.Semaphore) -> None:
        t = asyncio.ensure_future(coro)
        self._inflight.add(t)

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            sem.release()
        t.add_done_callback(done)

    def _fenced_txn(self, key: str, mod_revision: int, value: bytes) -> tuple[list[rpc.Compare], ...]:
        assert self._fence is not None
        ekey, erev = self._fence
        compare = [Compare.mod_revision(key) == mod_revision, Compare.create_revision(ekey) == erev]
        return compare, [op_put(key, value)], [op_get(key), op_get(ekey)]

    async def _write(self, key: str, mod_revision: int, value: bytes, what: str) -> rpc.TxnResponse | None:
        """The fenced write; None when it did not apply (and why has been handled)."""
        compare, success, failure = self._fenced_txn(key, mod_revision, value)
        delay = RETRY_INITIAL
        while True:
            try:
                resp = await self.c.txn(compare=compare, success=success, failure=failure)
                break
            except ClientError as e:
                self.stats.bind_errors += 1
                if what != "bind":
                    logkv(logging.WARNING, f"{what}_error", pod=key, error=str(e))
                    self.queue.retry_later(key)
                    self._wake.set()
                    return None
                # Outcome unknown: the Txn may still apply (a timed-out proposal can commit
                # later). Keep the pod charged to this node and send the same Txn again: both
                # compare the same mod_revision, so at most one applies, to this node. Freeing
                # the room now could let the next decision overcommit the node.
                logkv(logging.WARNING, "bind_retry", pod=key, error=str(e), delay=delay)
                await asyncio.sleep(delay)  # retry backoff, not synchronisation
                delay = min(delay * 2, RETRY_MAX)
        if resp.succeeded:
            return resp
        self.cache.forget(key)
        pod_r, lead_r = resp.responses[0].response_range, resp.responses[1].response_range
        assert self._fence is not None
        if not lead_r.kvs or lead_r.kvs[0].create_revision != self._fence[1]:
            self.stats.fenced += 1
            logkv(logging.WARNING, f"{what}_fenced", pod=key, identity=self.identity,
                  election_rev=self._fence[1], revision=resp.header.revision,
                  detail="our election key is gone or replaced: a newer leader owns scheduling")
            self.queue.add(key)
            self._lost.set()
            return None
        self.stats.bind_conflicts += 1
        logkv(logging.INFO, f"{what}_conflict", pod=key, expected_mod_revision=mod_revision,
              actual_mod_revision=pod_r.kvs[0].mod_revision if pod_r.kvs else 0)
        if pod_r.kvs:
            self._pod_set(pod_r.kvs[0])  # re-read: decide again from the current object
            if key in self.cache.pods and self.is_pending(self.cache.pods[key].pod):
                self.queue.add(key)
        else:
            self._forget_pod(key)  # deleted meanwhile
        # The room this pod was charged for is free again: parked pods may fit now.
        self._requeue_parked("bind failed", key)
        self._wake.set()
        return None

    def _rewritten(self, st: PodState, new: k8s.V1Pod) -> bytes:
        return obj.stored_with(st.raw, new) if st.raw else obj.encode(new)

    async def _bind(self, key: str, st: PodState, node: str, t0: float | None = None) -> None:
        t0 = time.perf_counter() if t0 is None else t0  # the attempt's start (its decision)
        new = obj.bound(st.pod, node)
        new.metadata.annotations = {**(new.metadata.annotations or {}), SCHEDULED_BY: self.identity}
        resp = await self._write(key, st.mod_revision, self._rewritten(st, new), "bind")
        # kube-scheduler: a bind that fails ends the attempt as an error
        self.attempts.done("scheduled" if resp is not None else "error", time.perf_counter() - t0)
        if resp is not None:
            self.stats.binds += 1
            self.queue.attempts.pop(key, None)
            logkv(logging.INFO, "bound", pod=key, node=node, revision=resp.header.revision)

    async def _mark_unschedulable(self, key: str, st: PodState, message: str) -> None:
        new = obj.unschedulable(st.pod, message)
        resp = await self._write(key, st.mod_revision, self._rewritten(st, new), "status")
        if resp is not None:
            self.stats.unschedulable_writes += 1
            logkv(logging.INFO, "unschedulable", pod=key, message=message)
