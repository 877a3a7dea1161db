"""Automatic compaction, decided by the leader and applied through the log.

``revision`` mode keeps the last N revisions: every 5 minutes (etcd's interval) it
compacts to ``current - N``. ``periodic`` mode keeps a time window W: it samples the
current revision every W/10 and compacts to the revision it saw W ago, checking every W
(or hourly when W exceeds an hour), as etcd 3.5's periodic compactor does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.internalpb.internal_pb2 import InternalRaftRequest
from datastore.server.config import Config, parse_duration


class _Revisions(Protocol):
    @property
    def current_rev(self) -> int: ...

    @property
    def compact_rev(self) -> int: ...


class CompactorHost(Protocol):
    """What the compactor needs from the member (not the whole EtcdServer)."""

    cfg: Config

    @property
    def kv(self) -> _Revisions: ...

    @property
    def is_leader(self) -> bool: ...

    async def propose(self, req: InternalRaftRequest) -> Any: ...


log = logging.getLogger("datastore.compactor")
REVISION_MODE_INTERVAL_S = 300.0


async def run_compactor(s: CompactorHost) -> None:
    cfg = s.cfg
    if cfg.auto_compaction_mode == "revision":
        keep = int(cfg.auto_compaction_retention or 0)
        if keep <= 0:
            return
        await _loop(s, REVISION_MODE_INTERVAL_S, lambda: s.kv.current_rev - keep)
        return
    window = parse_duration(cfg.auto_compaction_retention or "0", default_unit_hours=True)
    if window <= 0:
        return
    samples: deque[tuple[float, int]] = deque()

    def target() -> int:
        now = time.monotonic()
        samples.append((now, s.kv.current_rev))
        best = 0
        while samples and now - samples[0][0] >= window:
            best = samples.popleft()[1]
        return best

    await _loop(s, min(window, 3600.0) / 10, target)


async def _loop(s: CompactorHost, interval: float, target: Callable[[], int]) -> None:
    last = 0
    while True:
        await asyncio.sleep(interval)
        rev = target()
        if not s.is_leader or rev <= max(last, s.kv.compact_rev, 0):
            continue
        try:
            await s.propose(InternalRaftRequest(compaction=rpc.CompactionRequest(revision=rev)))
            last = rev
            log.info("auto-compacted", extra={"revision": rev})
        except errors.EtcdError as e:
            log.warning("auto-compaction failed", extra={"revision": rev, "error": str(e)})
