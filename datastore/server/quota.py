"""The backend quota: past ``--quota-backend-bytes`` a NOSPACE alarm caps all writes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.internalpb.internal_pb2 import InternalRaftRequest

if TYPE_CHECKING:
    from datastore.server.etcdserver import EtcdServer

# etcd charges each key roughly this much bookkeeping on top of its bytes.
KV_OVERHEAD = 256


def within_quota(s: EtcdServer, cost: int) -> bool:
    """The cheap check every write makes (no coroutine): no alarm and room for ``cost``."""
    return (not s.alarms.nospace
            and s.backend.size() + cost + KV_OVERHEAD <= s.cfg.quota_backend_bytes)


async def check_quota(s: EtcdServer, cost: int) -> None:
    """Refuse a write that would push the database past the quota, raising the alarm."""
    if within_quota(s, cost):
        return
    await refuse_over_quota(s)


async def refuse_over_quota(s: EtcdServer) -> None:
    """Raise ErrNoSpace for a write past the quota, first raising the alarm if needed."""
    if s.alarms.nospace:
        raise errors.ErrNoSpace()
    req = InternalRaftRequest(alarm=rpc.AlarmRequest(
        action=rpc.AlarmRequest.ACTIVATE, memberID=s.member_id, alarm=rpc.NOSPACE))
    try:
        await s.propose(req)
    except errors.EtcdError:
        pass  # the write is refused either way; the alarm is retried by the next one
    raise errors.ErrNoSpace()
