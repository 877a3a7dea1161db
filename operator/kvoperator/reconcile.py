"""The reconcile loop: observe -> plan -> act -> status, level-triggered and idempotent.

Each pass starts from what is there (the member list, each member's Status, the
processes/pods), asks the planner for ONE action, carries it out and writes the status.
Nothing is remembered between passes except the previous status (to keep condition
timestamps), so an operator restarted in the middle of a change simply observes where
the change got to and continues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from datastore.errors import ErrAuthFailed, wants_credentials
from kvoperator.etcdapi import NOT_IN_SYNC, PASSWORD_ENV, USER_ENV, ClusterAPI, ClusterAPIError
from kvoperator.planner import Action, ActionKind, Member, MemberStatus, Observed, Phase, Workload, plan
from kvoperator.spec import ClusterSpec
from kvoperator.status import build_status, same_status

if TYPE_CHECKING:
    from kvoperator.metrics import OperatorMetrics

log = logging.getLogger("kvoperator")
STATUS_TIMEOUT_S = 2.0
HISTORY = 40  # decisions and events kept for the console


class NotYet(Exception):
    """The platform cannot take this step yet (say why); the same step comes up again next
    pass, so this is a wait, not a failure. Example: a PVC of the same name is still
    Terminating, held by its protection finalizer."""


class Platform(Protocol):
    """Where members run: local processes or Kubernetes pods. Slots are numbered by ordinal."""

    async def load_spec(self) -> ClusterSpec | None: ...
    def client_url(self, ordinal: int) -> str: ...
    def peer_url(self, ordinal: int) -> str: ...
    def ordinal_of(self, peer_url: str) -> int | None: ...
    async def workloads(self) -> dict[int, Workload]: ...
    async def start_member(self, ordinal: int, initial_cluster: str, state: str) -> None: ...
    async def delete_member(self, ordinal: int, delete_data: bool) -> None: ...
    async def sync(self, o: Observed) -> None: ...  # level-triggered upkeep (labels, services)
    async def previous_status(self) -> Mapping[str, Any] | None: ...
    async def publish_status(self, status: Mapping[str, Any]) -> None: ...
    async def record(self, action: Action, outcome: str, message: str) -> None: ...


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def observe(api: ClusterAPI, p: Platform, spec: ClusterSpec) -> Observed:
    workloads = await p.workloads()
    refused = ""  # a member's refusal for want of a user: auth is on

    async def one(i: int) -> tuple[int, MemberStatus | None]:
        nonlocal refused
        try:
            r = await asyncio.wait_for(api.status(p.client_url(i)), STATUS_TIMEOUT_S)
        except ClusterAPIError as e:
            if wants_credentials(e.details) or ErrAuthFailed.message in e.details:
                refused = (f"{e.details}: the members have auth on; give the operator a user "
                           f"with the root role: --user NAME and {PASSWORD_ENV} (or {USER_ENV})")
            return i, None
        except TimeoutError:
            return i, None
        return i, MemberStatus(r.header.member_id, r.header.cluster_id, r.leader, r.raftIndex,
                               r.raftAppliedIndex, r.isLearner, tuple(r.errors))

    running = sorted(i for i, w in workloads.items() if w.phase is Phase.RUNNING)
    statuses = {i: s for i, s in await asyncio.gather(*(one(i) for i in running)) if s is not None}
    # Ask the leader first: a lagging member may answer with an older member list.
    leaders = [i for i, s in statuses.items() if s.leader_id and s.leader_id == s.member_id]
    voters_first = sorted(statuses, key=lambda i: (i not in leaders, statuses[i].is_learner, i))
    members: tuple[Member, ...] | None = None
    cluster_id, error = 0, ""
    for i in voters_first:
        try:
            r = await asyncio.wait_for(api.member_list([p.client_url(i)]), STATUS_TIMEOUT_S)
        except (ClusterAPIError, TimeoutError) as e:
            error = str(e) or "timeout"
            continue
        cluster_id = r.header.cluster_id
        members = tuple(Member(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), m.isLearner,
                               next((o for o in map(p.ordinal_of, m.peerURLs) if o is not None), None))
                        for m in r.members)
        break
    return Observed(spec.name, spec.size, spec.generation, members, cluster_id, statuses, workloads,
                    error or refused)


class Reconciler:
    def __init__(self, platform: Platform, api: ClusterAPI, interval: float = 1.0,
                 metrics: OperatorMetrics | None = None, cluster: str = "") -> None:
        self.p = platform
        self.api = api
        self.interval = interval
        self.metrics = metrics
        self.cluster = cluster  # the metrics' cluster label (default: the spec's name)
        self._last_logged: tuple[ActionKind, str] | None = None
        self.last_action: Action | None = None
        self.last_observed: Observed | None = None
        self._last_wait = ""  # the last NotYet reason recorded as an Event (once per reason)
        # What the console shows: the spec and status of the last pass, the planner's recent
        # decisions (each change of decision, and every action carried out) and the Events.
        self.last_spec: ClusterSpec | None = None
        self.last_status: dict[str, Any] | None = None
        self.passes = 0
        self.actions: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.events: deque[dict[str, Any]] = deque(maxlen=HISTORY)

    async def reconcile_once(self) -> Action | None:
        if self.metrics is None:
            return await self._reconcile_once()
        t0 = time.perf_counter()
        try:
            return await self._reconcile_once()
        except Exception:
            self.metrics.errors.labels(self.cluster).inc()
            raise
        finally:
            if self.cluster:
                self.metrics.duration.labels(self.cluster).observe(time.perf_counter() - t0)

    async def _reconcile_once(self) -> Action | None:
        spec = await self.p.load_spec()
        if spec is None:
            return None
        self.cluster = self.cluster or spec.name
        o = await observe(self.api, self.p, spec)
        await self.p.sync(o)
        a = plan(o)
        self.last_action, self.last_observed = a, o
        if self.metrics is not None:
            self.metrics.observed(self.cluster, o)
        outcome, message = "planned", a.reason
        if a.changes_something:
            outcome, message = await self._act(a, o, spec)
            if self.metrics is not None:
                self.metrics.acted(self.cluster, a, outcome)
        elif a.kind is ActionKind.DEGRADED and (a.kind, a.reason + outcome) != self._last_logged:
            await self._record(a, "degraded", a.reason)  # a Warning Event, once per new reason
        self._remember(a, outcome, message)
        self._log(a, outcome, message)
        prev = await self.p.previous_status()
        st = build_status(o, a, now_rfc3339(), (prev or {}).get("conditions", []))
        self.last_spec, self.last_status, self.passes = spec, st, self.passes + 1
        if not same_status(prev, st):
            await self.p.publish_status(st)
        return a

    def _remember(self, a: Action, outcome: str, message: str) -> None:
        last = self.actions[-1] if self.actions else None
        same = last is not None and (last["kind"], last["reason"], last["outcome"]) == (
            a.kind.value, a.reason, outcome)
        if not a.changes_something and last is not None and same:
            last["until"] = time.time()  # the same wait or steady state, still
            return
        self.actions.append({"time": time.time(), "kind": a.kind.value, "reason": a.reason,
                             "outcome": outcome, "message": message if message != a.reason else "",
                             "ordinal": a.ordinal, "condition": a.condition})

    async def _record(self, a: Action, outcome: str, message: str) -> None:
        """An Event (Kubernetes) or nothing (local); kept for the console either way."""
        self.events.append({"time": time.time(), "kind": a.kind.value, "outcome": outcome,
                            "message": message})
        await self.p.record(a, outcome, message)

    def _log(self, a: Action, outcome: str, message: str) -> None:
        key = (a.kind, a.reason + outcome)
        if not a.changes_something and key == self._last_logged:
            return  # a steady wait/converged state is logged once, not every pass
        self._last_logged = key
        extra: dict[str, Any] = {"action": a.kind.value, "reason": a.reason, "outcome": outcome,
                                 "condition": a.condition}
        if a.ordinal is not None:
            extra["ordinal"] = a.ordinal
        if a.member_id is not None:
            extra["member_id"] = f"{a.member_id:x}"
        if a.target_id is not None:
            extra["target_id"] = f"{a.target_id:x}"
        if message != a.reason:
            extra["detail"] = message
        level = logging.WARNING if outcome == "failed" or a.kind is ActionKind.DEGRADED else logging.INFO
        log.log(level, "action", extra=extra)

    def _endpoints(self, o: Observed) -> list[str]:
        """Client URLs of live voters, the leader first (membership calls go to it)."""
        leader = {s.leader_id for s in o.statuses.values() if s.healthy}
        eps = []
        for m in sorted(o.members or (), key=lambda m: m.ordinal if m.ordinal is not None else 1 << 30):
            st = o.statuses.get(m.ordinal) if m.ordinal is not None else None
            if m.is_learner or st is None or not st.healthy or m.ordinal is None:
                continue
            if m.id in leader:
                eps.insert(0, self.p.client_url(m.ordinal))
            else:
                eps.append(self.p.client_url(m.ordinal))
        return eps

    async def _act(self, a: Action, o: Observed, spec: ClusterSpec) -> tuple[str, str]:
        p, k = self.p, a.kind
        i = a.ordinal if a.ordinal is not None else 0
        try:
            if k is ActionKind.BOOTSTRAP:
                await p.start_member(i, f"{spec.name}-{i}={p.peer_url(i)}", "new")
            elif k is ActionKind.START_MEMBER:
                await p.start_member(i, a.initial_cluster or f"{spec.name}-{i}={p.peer_url(i)}",
                                     a.initial_cluster_state or "existing")
            elif k is ActionKind.ADD_LEARNER:
                m = await self.api.member_add_learner(self._endpoints(o), p.peer_url(i))
                await self._record(a, "done", f"{a.reason}; MemberAdd gave ID {m.ID:x}")
                return "done", f"MemberAdd gave ID {m.ID:x}"
            elif k is ActionKind.PROMOTE:
                assert a.member_id is not None
                await self.api.member_promote(self._endpoints(o), a.member_id)
            elif k is ActionKind.MOVE_LEADER:
                assert a.target_id is not None
                await self.api.move_leader(self._endpoints(o)[0], a.target_id)
            elif k is ActionKind.REMOVE_MEMBER:
                assert a.member_id is not None
                await self.api.member_remove(self._endpoints(o), a.member_id)
            elif k is ActionKind.DELETE_WORKLOAD:
                await p.delete_member(i, a.delete_data)
        except NotYet as e:
            if str(e) != self._last_wait:
                self._last_wait = str(e)
                await self._record(a, "waiting", f"{a.reason}: waiting: {e}")
            return "waiting", str(e)
        except ClusterAPIError as e:
            if k is ActionKind.PROMOTE and NOT_IN_SYNC in e.details:
                return "retry", "the learner is not in sync with the leader yet; promoting again next pass"
            await self._record(a, "failed", f"{a.reason}: {e}")
            return "failed", str(e)
        except (OSError, RuntimeError) as e:
            await self._record(a, "failed", f"{a.reason}: {e}")
            return "failed", str(e)
        self._last_wait = ""
        await self._record(a, "done", a.reason)
        return "done", a.reason

    async def run(self, stop: asyncio.Event, wake: asyncio.Event | None = None) -> None:
        """Reconcile until ``stop``; right after an action, or when ``wake`` is set, go again."""
        while not stop.is_set():
            try:
                a = await self.reconcile_once()
            except Exception:  # keep reconciling: the next pass observes afresh
                log.exception("reconcile pass failed")
                a = None
            delay = 0.2 if a is not None and a.changes_something else self.interval
            waiters = [asyncio.ensure_future(stop.wait())]
            if wake is not None:
                waiters.append(asyncio.ensure_future(wake.wait()))
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if wake is not None:
                wake.clear()
