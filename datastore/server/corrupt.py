"""etcd's ``--experimental-initial-corrupt-check``: compare HashKV with peers before serving.

At start-up, before the member serves clients or joins raft, it hashes its key space at its
current revision and asks every peer for HashKV at that same revision (on the peer port,
which needs no user when auth is on; see ``peer_query``). A different hash
with the same compact revision means this member's data differs from the cluster's: it
refuses to start. Different compact revisions, a peer behind us (future revision), a peer
that compacted past us, or an unreachable peer only produce warnings, as in etcd.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

import grpc

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.server.peer_query import PeerQueries
from datastore.storage.backend import CORRUPT_ACTION, CorruptDataError

if TYPE_CHECKING:
    from datastore.api.internalpb.internal_pb2 import MemberRecord
    from datastore.server.etcdserver import EtcdServer

log = logging.getLogger("datastore.server")


async def _peer_hash(queries: PeerQueries, m: MemberRecord, rev: int,
                     rpc_timeout: float) -> rpc.HashKVResponse | str:
    try:
        return cast(rpc.HashKVResponse,
                    await queries.call(list(m.peer_urls), list(m.client_urls), "HashKV",
                                       rpc.HashKVRequest(revision=rev), rpc_timeout))
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()}"  # type: ignore[attr-defined]
    except (OSError, ValueError) as e:
        return str(e)


async def initial_corrupt_check(server: EtcdServer, rpc_timeout: float = 5.0) -> None:
    """Raise CorruptDataError if a peer's HashKV at our revision differs from ours."""
    h, crev, rev = server.kv.hash_kv(0)
    log.info("starting initial corruption check", extra={
        "local_member_id": f"{server.member_id:x}", "revision": rev, "hash": h,
        "compact_revision": crev})
    peers = [m for m in server.members.members.values()
             if server.member_id != m.ID and (m.peer_urls or m.client_urls)]
    queries = PeerQueries(server.cfg)
    try:
        answers = await asyncio.gather(*(_peer_hash(queries, m, rev, rpc_timeout)
                                         for m in peers))
    finally:
        await queries.close()
    mismatch = []
    for m, ans in zip(peers, answers, strict=True):
        peer = f"{m.ID:x}"
        if isinstance(ans, str):
            # etcd: a slow peer (future revision), a peer that compacted past us, or one
            # that does not answer cannot confirm or refute our data
            log.warning("cannot fetch hash from remote peer", extra={
                "remote_peer_id": peer, "revision": rev, "error": ans})
        elif ans.hash != h and ans.compact_revision == crev:
            log.warning("found different hash values from remote peer", extra={
                "remote_peer_id": peer, "revision": rev, "local_hash": h,
                "remote_hash": ans.hash, "compact_revision": crev})
            mismatch.append(peer)
        elif ans.hash != h:
            log.warning("found different compact revision values from remote peer", extra={
                "remote_peer_id": peer, "local_compact_revision": crev,
                "remote_compact_revision": ans.compact_revision})
    if mismatch:
        raise CorruptDataError(
            f"{server.member_id:x} found data inconsistency with peers {mismatch} at revision "
            f"{rev} (initial corruption check); {CORRUPT_ACTION}")
    log.info("initial corruption checking passed; no corruption",
             extra={"local_member_id": f"{server.member_id:x}"})
