"""The leader's version monitor (etcd's monitorClusterVersions): decide the cluster version.

Every ``MONITOR_INTERVAL_S`` the leader asks each member for its release on the peer
channel it already has (``Members``: a 0.15+ member fills ``release``; an older one leaves
it empty and counts as ``BASE_LEVEL``, so this works with members that know nothing of
it). When every member answered and the lowest release is above the agreed cluster version,
it proposes that release's ``MAJOR.MINOR`` through the log. An unreachable member leaves
the version as it is (etcd too): a member that may be running anything must not be
assumed upgraded. The version is never lowered; a member older than it gets one warning
line per ``WARN_INTERVAL_S`` saying what to do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc

from datastore import errors
from datastore.api.internalpb.internal_pb2 import ClusterVersionSetRequest, InternalRaftRequest
from datastore.api.raftpb import raft_pb2 as pb
from datastore.api.raftpb import raft_pb2_grpc
from datastore.server.features import (
    BASE_LEVEL,
    FEATURES,
    Level,
    format_level,
    parse_level,
    release,
)

if TYPE_CHECKING:
    from datastore.server.etcdserver import EtcdServer

log = logging.getLogger("datastore.server")

MONITOR_INTERVAL_S = 4.0  # etcd's monitorVersionInterval
ASK_TIMEOUT_S = 2.0
WARN_INTERVAL_S = 30.0


async def member_release(s: EtcdServer, member_id: int) -> str | None:
    """The release ``member_id`` runs ("" for one before 0.15), None if it did not answer."""
    if member_id == s.member_id:
        return release()
    t = s.transport
    p = t.peers.get(member_id) if t is not None else None  # type: ignore[attr-defined]
    ch = p.channel if p is not None else None
    if ch is None:
        return None  # no stream to it now: down, restarting, or not yet connected
    try:
        resp = await raft_pb2_grpc.RaftTransportStub(ch).Members(pb.MembersRequest(),
                                                                 timeout=ASK_TIMEOUT_S)
    except grpc.RpcError as e:
        log.debug("asking member %x for its release failed: %s", member_id, e)
        return None
    return resp.release


class VersionMonitor:
    def __init__(self, server: EtcdServer) -> None:
        self.s = server
        self._warned: dict[int, float] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)  # a period, not synchronisation
            if self.s.is_leader:
                try:
                    await self.check_once()
                except errors.EtcdError as e:  # the proposal failed: try next interval
                    log.debug("cluster version proposal failed: %s", e)

    async def releases(self) -> dict[int, str | None]:
        ids = sorted(self.s.members.members)
        answers = await asyncio.gather(*(member_release(self.s, i) for i in ids))
        return dict(zip(ids, answers, strict=True))

    async def check_once(self) -> Level | None:
        """One decision; returns the version proposed, if any."""
        s = self.s
        cv = s.cluster_version
        found = await self.releases()
        levels: list[Level] = []
        for mid, rel in found.items():
            if rel is None:
                continue
            if rel and s.transport is not None:  # 0.15+ takes streamed snapshots
                s.transport.no_snapshots_until.pop(mid, None)  # type: ignore[attr-defined]
            level = parse_level(rel) if rel else BASE_LEVEL
            levels.append(level)
            if level < cv.effective:
                self._warn_old(mid, rel, str(cv))
        if not levels or None in found.values():
            return None  # someone did not answer: it may be anything
        lowest = min(levels)
        if lowest <= cv.effective:  # never lowered; this member is one of them
            return None
        if lowest < FEATURES["cluster_version"]:  # the entry itself is a gated feature
            return None
        req = InternalRaftRequest(cluster_version_set=ClusterVersionSetRequest(
            ver=format_level(lowest)))
        log.info("setting the cluster version", extra={"from": str(cv),
                                                        "to": format_level(lowest)})
        await s.propose(req)
        return lowest

    def _warn_old(self, member_id: int, rel: str, cluster: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(member_id, -WARN_INTERVAL_S) < WARN_INTERVAL_S:
            return
        self._warned[member_id] = now
        log.warning("a member runs a release older than the cluster version; upgrade it", extra={
            "member_id": f"{member_id:x}", "member_release": rel or "0.14 or older",
            "cluster_version": cluster})
