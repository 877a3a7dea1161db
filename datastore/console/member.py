"""What a member's console shows: its cluster as this member sees it.

- every member of the member list, with what its Status RPC says (asked on its peer port,
  which needs no user when auth is on, with a short timeout, so a dead peer shows as
  unreachable rather than stalling the page); this member answers for itself;
- the leader's replication progress per follower, when this member is the leader;
- rates from counters sampled once a second (requests by method, watch events, applied
  entries, the WAL fsync's p99 over the last 10 s), kept for the last 5 minutes;
- watchers grouped by key prefix, and lease counts.

No key values ever: watched keys are cut to a prefix (:func:`key_prefix`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.errors import wants_credentials
from datastore.server.peer_query import PeerQueries

if TYPE_CHECKING:
    from datastore.api.internalpb.internal_pb2 import MemberRecord
    from datastore.server.etcdserver import EtcdServer

PEER_TIMEOUT_S = 1.0
SAMPLE_S = 1.0
KEEP = 300  # samples: 5 minutes
FSYNC_WINDOW = 10  # samples the p99 is taken over
TOP_PREFIXES = 20
CHART_METHODS = ("Range", "Put", "DeleteRange", "Txn")  # the rest is charted as "other"
PROGRESS_STATES = {0: "probe", 1: "replicate", 2: "snapshot"}


def key_prefix(key: bytes, end: bytes | None) -> str:
    """The group a watcher is counted in: its key cut after the second path segment
    (``/registry/pods/default/web-1`` -> ``/registry/pods/``), or after 8 characters
    when the key has no ``/``; never a whole object's key."""
    if end == b"" and key in (b"", b"\0"):
        return "(all keys)"
    text = key.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    if text.startswith("/"):
        parts = text.split("/", 3)
        return "/".join(parts[:3]) + ("/" if len(parts) > 3 else "")
    if "/" in text:
        return text.split("/", 1)[0] + "/"
    return text if len(text) <= 8 else text[:8] + "…"


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """Prometheus' histogram_quantile over per-bucket counts (the last is +Inf)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank, acc, lower = q * total, 0, 0.0
    for i, n in enumerate(counts):
        if i >= len(bounds):
            return bounds[-1]  # in +Inf: the highest finite bound, as Prometheus answers
        if acc + n >= rank and n > 0:
            return lower + (bounds[i] - lower) * (rank - acc) / n
        acc += n
        lower = bounds[i]
    return bounds[-1]


class Sampler:
    """Counters read once a second (plain attribute reads: microseconds), rates kept."""

    def __init__(self, s: EtcdServer) -> None:
        self.s = s
        self.points: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self._prev: tuple[float, dict[str, int], int, int] | None = None
        self._fsync: deque[list[int]] = deque(maxlen=FSYNC_WINDOW + 1)

    def _methods(self) -> dict[str, int]:
        out: dict[str, int] = {}
        gm = self.s.grpc_metrics
        for m in (gm.methods.values() if gm is not None else ()):
            # a stream's requests are its messages; a unary call's, its starts
            out[m.method] = out.get(m.method, 0) + (m.started if m.type == "unary" else m.received)
        return out

    def sample(self) -> None:
        s = self.s
        now = (time.monotonic(), self._methods(), s.hub.events_sent, s.applier.applied_index)
        self._fsync.append(list(s.stats.wal_fsync.counts))
        prev, self._prev = self._prev, now
        if prev is None:
            return
        dt = max(now[0] - prev[0], 1e-3)
        methods = {m: round((n - prev[1].get(m, 0)) / dt, 1) for m, n in now[1].items()}
        first, last = self._fsync[0], self._fsync[-1]
        p99 = quantile(0.99, s.stats.wal_fsync.bounds, [b - a for a, b in zip(first, last, strict=True)])
        self.points.append({
            "t": round(time.time(), 1),
            "methods": {m: r for m, r in methods.items() if r > 0},
            "events": round((now[2] - prev[2]) / dt, 1),
            "applied": round((now[3] - prev[3]) / dt, 1),
            "fsync_p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        })

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_S)  # the sampling period, not a synchronisation

    def history(self) -> dict[str, Any]:
        pts = list(self.points)
        requests = {m: [p["methods"].get(m, 0) for p in pts] for m in CHART_METHODS}
        requests["other"] = [round(sum(r for m, r in p["methods"].items() if m not in CHART_METHODS), 1)
                             for p in pts]
        return {"t": [p["t"] for p in pts], "requests": requests,
                "events": [p["events"] for p in pts], "applied": [p["applied"] for p in pts],
                "fsync_p99_ms": [p["fsync_p99_ms"] for p in pts]}

    def now(self) -> dict[str, Any]:
        last = self.points[-1] if self.points else {"methods": {}, "events": 0, "applied": 0,
                                                    "fsync_p99_ms": None}
        return {"requests": dict(sorted(last["methods"].items(), key=lambda kv: -kv[1])),
                "events": last["events"], "applied": last["applied"],
                "fsync_p99_ms": last["fsync_p99_ms"]}


class MemberView:
    """Builds the member's console view (``view``); ``start``/``close`` run the sampler."""

    def __init__(self, s: EtcdServer) -> None:
        self.s = s
        self.sampler = Sampler(s)
        self._peers = PeerQueries(s.cfg)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.sampler.run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._peers.close()

    # ---- peers --------------------------------------------------------------------------
    async def _status(self, m: MemberRecord) -> rpc.StatusResponse | str:
        if not m.client_urls:
            return "not started yet"
        try:
            return cast(rpc.StatusResponse,
                        await self._peers.call(list(m.peer_urls), list(m.client_urls), "Status",
                                               rpc.StatusRequest(), PEER_TIMEOUT_S))
        except grpc.aio.AioRpcError as e:
            # an older member asked on its client URL: with auth on, Status is for users only
            if wants_credentials(e.details() or ""):
                return AUTH_ON
            return e.code().name.lower().replace("_", " ")
        except (OSError, ValueError) as e:  # an unreadable certificate file, a bad URL
            return str(e)

    # ---- the view -----------------------------------------------------------------------
    async def view(self) -> dict[str, Any]:
        s = self.s
        records = sorted(s.members.members.values(), key=lambda m: (m.name or "~", m.ID))
        await self._peers.forget({u for m in records for u in (*m.peer_urls[:1], *m.client_urls[:1])})
        others = [m for m in records if s.member_id != m.ID]
        answers = dict(zip([m.ID for m in others],
                           await asyncio.gather(*(self._status(m) for m in others)), strict=True))
        st = s.node.status()  # after the peers answered: this member's figures are as fresh
        alarms: dict[int, list[str]] = {}
        for a in s.alarms.list():
            alarms.setdefault(a.memberID, []).append(rpc.AlarmType.Name(a.alarm))
        leader = s.leader_id or _most_reported_leader(answers.values())
        rows = []
        for m in records:
            row: dict[str, Any] = {"id": f"{m.ID:x}", "name": m.name, "learner": m.is_learner,
                                   "leader": leader == m.ID, "self": s.member_id == m.ID,
                                   "client_url": m.client_urls[0] if m.client_urls else "",
                                   "alarms": alarms.get(m.ID, [])}
            if s.member_id == m.ID:
                row.update(reachable=True, term=st.hard_state.term, commit=st.hard_state.commit,
                           applied=s.applier.applied_index, db_size=s.backend.size() + s.wal.size(),
                           db_in_use=s.backend.size_in_use(), sees_leader=f"{s.leader_id:x}")
            else:
                a = answers[m.ID]
                if isinstance(a, str):
                    row.update(reachable=False, error=a)
                else:
                    row.update(reachable=True, term=a.raftTerm, commit=a.raftIndex,
                               applied=a.raftAppliedIndex, db_size=a.dbSize, db_in_use=a.dbSizeInUse,
                               sees_leader=f"{a.leader:x}")
            row["health"] = _health(row)
            rows.append(row)
        names = {m.ID: m.name for m in records}
        return {
            "self": {"id": f"{s.member_id:x}", "name": s.cfg.name, "leader": s.is_leader},
            "cluster_id": f"{s.cluster_id:x}",
            "leader": f"{leader:x}" if leader else "",
            "leader_name": names.get(leader, ""),
            "members": rows,
            "progress": self._progress(st, names) if s.is_leader else None,
            "rates": self.sampler.now(),
            "history": self.sampler.history(),
            "watchers": self._watchers(),
            "leases": {"count": len(s.lessor.leases), "attached_keys": s.lessor.attached_keys},
        }

    def _progress(self, st: Any, names: dict[int, str]) -> list[dict[str, Any]]:
        own = st.progress.get(self.s.member_id)
        last = own.match if own is not None else st.hard_state.commit
        return [{"id": f"{pid:x}", "name": names.get(pid, ""), "self": pid == self.s.member_id,
                 "match": pr.match, "next": pr.next, "lag": max(0, last - pr.match),
                 "state": PROGRESS_STATES.get(int(pr.state), str(pr.state)),
                 "active": pr.recent_active, "learner": pr.is_learner, "inflight": pr.inflight,
                 "pending_snapshot": pr.pending_snapshot}
                for pid, pr in sorted(st.progress.items(), key=lambda kv: names.get(kv[0], ""))]

    def _watchers(self) -> dict[str, Any]:
        hub = self.s.hub
        groups: Counter[str] = Counter()
        for key, end, n in hub.watcher_groups():
            groups[key_prefix(key, end)] += n
        return {"total": sum(groups.values()), "unsynced": len(hub.unsynced),
                "by_prefix": groups.most_common(TOP_PREFIXES)}


AUTH_ON = "auth is on"  # a peer that refuses Status to the console, which has no user


def _most_reported_leader(answers: Any) -> int:
    seen = Counter(a.leader for a in answers if not isinstance(a, str) and a.leader)
    return seen.most_common(1)[0][0] if seen else 0


def _health(row: dict[str, Any]) -> str:
    if row.get("error") == AUTH_ON:
        return "answering (its figures need a user: auth is on)"
    if not row["reachable"]:
        return f"unreachable: {row['error']}"
    if row["alarms"]:
        return "alarm " + ",".join(row["alarms"])
    if row.get("sees_leader", "0") == "0":
        return "no leader"
    return "healthy"
