"""The asyncio client: KV, Txn, Watch, Lease, Cluster and Maintenance over etcd's v3 API.

    async with Client(["127.0.0.1:2379"]) as c:
        await c.put("k", "v")
        r = await c.get("k")

Responses are the generated ``etcdserverpb`` messages. Failover and retries follow
``datastore.client.connection`` (etcd clientv3's rules).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from datastore import errors as etcd_errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc as stubs
from datastore.client.connection import Metadata, Pool, Retry, TLSConfig
from datastore.client.errors import ClientError
from datastore.client.keepalive import KeepAlive, LostCallback
from datastore.client.requests import KeyLike, delete_request, put_request, range_request
from datastore.client.txn import is_read_only, txn_request
from datastore.client.watch import Watch

__all__ = ["Client"]


class Client:
    """An etcd v3 client for one cluster, given some of its members' client endpoints."""

    def __init__(self, endpoints: Sequence[str] | str, timeout: float = 5.0,
                 tls: TLSConfig | None = None, user: str | None = None,
                 password: str | None = None) -> None:
        """With ``user`` and ``password``, the client logs in on its first call and sends
        the token with every request and stream, logging in again when a member refuses
        it (expired, or issued before a restart or an auth change), as clientv3 does."""
        self.pool = Pool(endpoints, tls, timeout, user, password)
        self.timeout = timeout
        # Background streams this client started, ended by close().
        self._watches: weakref.WeakSet[Watch] = weakref.WeakSet()
        self._keepalives: weakref.WeakSet[KeepAlive] = weakref.WeakSet()

    @property
    def endpoints(self) -> list[str]:
        return list(self.pool.endpoints)

    def add_endpoints(self, endpoints: Sequence[str]) -> None:
        """Fail over to these members too (new members of the cluster, say); the token of a
        client that logged in stays good on them."""
        self.pool.add_endpoints(endpoints)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """End this client's watches and keep-alives, then close its channels."""
        for w in list(self._watches):
            await w.cancel()
        for ka in list(self._keepalives):
            await ka.stop()
        await self.pool.close()

    async def _unary(self, stub: Any, method: str, req: Any, policy: Retry,
                     endpoint: str | None = None, budget: float | None = None) -> Any:
        async def invoke(ch: grpc.aio.Channel, t: float, md: Metadata) -> Any:
            return await getattr(stub(ch), method)(req, timeout=t, metadata=md)
        return await self.pool.call(invoke, policy, endpoint, budget)

    # ---- KV -------------------------------------------------------------------------------
    async def get(self, key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None,
                  revision: int = 0, limit: int = 0, serializable: bool = False,
                  keys_only: bool = False, count_only: bool = False,
                  sort_order: str | int | None = None,
                  sort_target: str | int | None = None, min_mod_revision: int = 0,
                  max_mod_revision: int = 0, min_create_revision: int = 0,
                  max_create_revision: int = 0) -> rpc.RangeResponse:
        req = range_request(key, prefix=prefix, range_end=range_end, revision=revision, limit=limit,
                            serializable=serializable, keys_only=keys_only, count_only=count_only,
                            sort_order=sort_order, sort_target=sort_target,
                            min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
                            min_create_revision=min_create_revision,
                            max_create_revision=max_create_revision)
        return await self._unary(stubs.KVStub, "Range", req, Retry.REPEATABLE)

    async def put(self, key: KeyLike, value: KeyLike, *, lease: int = 0,
                  prev_kv: bool = False) -> rpc.PutResponse:
        req = put_request(key, value, lease=lease, prev_kv=prev_kv)
        return await self._unary(stubs.KVStub, "Put", req, Retry.NON_REPEATABLE)

    async def delete(self, key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None,
                     prev_kv: bool = False) -> rpc.DeleteRangeResponse:
        req = delete_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv)
        return await self._unary(stubs.KVStub, "DeleteRange", req, Retry.NON_REPEATABLE)

    async def txn(self, compare: Iterable[rpc.Compare] = (), success: Iterable[rpc.RequestOp] = (),
                  failure: Iterable[rpc.RequestOp] = ()) -> rpc.TxnResponse:
        req = txn_request(compare, success, failure)
        policy = Retry.REPEATABLE if is_read_only(req) else Retry.NON_REPEATABLE
        return await self._unary(stubs.KVStub, "Txn", req, policy)

    async def compact(self, revision: int, physical: bool = False) -> rpc.CompactionResponse:
        req = rpc.CompactionRequest(revision=revision, physical=physical)
        return await self._unary(stubs.KVStub, "Compact", req, Retry.NON_REPEATABLE)

    # ---- Watch ----------------------------------------------------------------------------
    def watch(self, key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None,
              start_revision: int = 0, prev_kv: bool = False, progress_notify: bool = False,
              filters: Iterable[str | int] = ()) -> Watch:
        """An async iterator of event batches that resumes across member failures."""
        w = Watch(self.pool, key, prefix=prefix, range_end=range_end,
                  start_revision=start_revision, prev_kv=prev_kv,
                  progress_notify=progress_notify, filters=filters)
        self._watches.add(w)
        return w

    # ---- Lease ----------------------------------------------------------------------------
    async def lease_grant(self, ttl: int, id: int = 0) -> rpc.LeaseGrantResponse:  # noqa: A002
        req = rpc.LeaseGrantRequest(TTL=ttl, ID=id)
        return await self._unary(stubs.LeaseStub, "LeaseGrant", req, Retry.REPEATABLE)

    async def lease_revoke(self, id: int) -> rpc.LeaseRevokeResponse:  # noqa: A002
        req = rpc.LeaseRevokeRequest(ID=id)
        return await self._unary(stubs.LeaseStub, "LeaseRevoke", req, Retry.REPEATABLE)

    async def lease_time_to_live(self, id: int, keys: bool = False) -> rpc.LeaseTimeToLiveResponse:  # noqa: A002
        req = rpc.LeaseTimeToLiveRequest(ID=id, keys=keys)
        return await self._unary(stubs.LeaseStub, "LeaseTimeToLive", req, Retry.REPEATABLE)

    async def lease_leases(self) -> rpc.LeaseLeasesResponse:
        return await self._unary(stubs.LeaseStub, "LeaseLeases", rpc.LeaseLeasesRequest(),
                                 Retry.REPEATABLE)

    def keep_alive(self, lease_id: int, on_lost: LostCallback | None = None) -> KeepAlive:
        """Keep ``lease_id`` alive in a background task until ``stop()`` or its loss."""
        ka = KeepAlive(self.pool, lease_id, on_lost).start()
        self._keepalives.add(ka)
        return ka

    # ---- Cluster --------------------------------------------------------------------------
    async def member_list(self, linearizable: bool = False,
                          endpoint: str | None = None) -> rpc.MemberListResponse:
        """The member list as the current member, or ``endpoint``, sees it."""
        req = rpc.MemberListRequest(linearizable=linearizable)
        return await self._unary(stubs.ClusterStub, "MemberList", req, Retry.REPEATABLE, endpoint)

    async def member_add(self, peer_urls: Iterable[str], is_learner: bool = False) -> rpc.MemberAddResponse:
        req = rpc.MemberAddRequest(peerURLs=list(peer_urls), isLearner=is_learner)
        return await self._unary(stubs.ClusterStub, "MemberAdd", req, Retry.NON_REPEATABLE)

    async def member_remove(self, id: int) -> rpc.MemberRemoveResponse:  # noqa: A002
        req = rpc.MemberRemoveRequest(ID=id)
        return await self._unary(stubs.ClusterStub, "MemberRemove", req, Retry.NON_REPEATABLE)

    async def member_update(self, id: int, peer_urls: Iterable[str]) -> rpc.MemberUpdateResponse:  # noqa: A002
        req = rpc.MemberUpdateRequest(ID=id, peerURLs=list(peer_urls))
        return await self._unary(stubs.ClusterStub, "MemberUpdate", req, Retry.NON_REPEATABLE)

    async def member_promote(self, id: int) -> rpc.MemberPromoteResponse:  # noqa: A002
        req = rpc.MemberPromoteRequest(ID=id)
        return await self._unary(stubs.ClusterStub, "MemberPromote", req, Retry.NON_REPEATABLE)

    # ---- Maintenance ----------------------------------------------------------------------
    async def status(self, endpoint: str | None = None) -> rpc.StatusResponse:
        """Status of the current member, or of ``endpoint`` ("host:port") specifically."""
        return await self._unary(stubs.MaintenanceStub, "Status", rpc.StatusRequest(),
                                 Retry.REPEATABLE, endpoint)

    async def hash_kv(self, endpoint: str | None = None, revision: int = 0) -> rpc.HashKVResponse:
        return await self._unary(stubs.MaintenanceStub, "HashKV", rpc.HashKVRequest(revision=revision),
                                 Retry.REPEATABLE, endpoint)

    async def alarm_list(self) -> rpc.AlarmResponse:
        req = rpc.AlarmRequest(action=rpc.AlarmRequest.GET)
        return await self._unary(stubs.MaintenanceStub, "Alarm", req, Retry.REPEATABLE)

    async def alarm_disarm(self, member_id: int = 0, alarm: int = 0) -> rpc.AlarmResponse:
        req = rpc.AlarmRequest(action=rpc.AlarmRequest.DEACTIVATE, memberID=member_id,
                               alarm=alarm)  # type: ignore[arg-type]
        return await self._unary(stubs.MaintenanceStub, "Alarm", req, Retry.NON_REPEATABLE)

    async def defragment(self, endpoint: str | None = None) -> rpc.DefragmentResponse:
        return await self._unary(stubs.MaintenanceStub, "Defragment", rpc.DefragmentRequest(),
                                 Retry.NON_REPEATABLE, endpoint, budget=max(self.timeout, 60.0))

    async def leader_endpoint(self) -> str:
        """The endpoint (among ours) of the current leader; raises NoLeaderError otherwise."""
        from datastore.client.errors import NoLeaderError

        for ep in self.pool.endpoints:
            try:
                st = await self.status(ep)
            except ClientError:
                continue
            if st.leader and st.leader == st.header.member_id:
                return ep
        raise NoLeaderError("no leader among the client's endpoints " + ", ".join(self.pool.endpoints))

    async def move_leader(self, target_id: int) -> rpc.MoveLeaderResponse:
        """Transfer leadership to member ``target_id`` (sent to the current leader)."""
        req = rpc.MoveLeaderRequest(targetID=target_id)
        try:
            return await self._unary(stubs.MaintenanceStub, "MoveLeader", req, Retry.REPEATABLE)
        except ClientError as e:
            if e.details != etcd_errors.ErrNotLeader.message:
                raise
        return await self._unary(stubs.MaintenanceStub, "MoveLeader", req, Retry.REPEATABLE,
                                 await self.leader_endpoint())
