"""``datastore grpc-proxy start``: a stateless gRPC proxy for the etcd v3 API.

Every method of the KV, Watch, Lease, Cluster, Maintenance, Auth, Lock and Election
services is forwarded as raw bytes to the cluster (client metadata, e.g. the auth
``token``, passed on), with endpoint failover by the client's rule
(:mod:`datastore.client.connection`: repeatable calls move to the next endpoint on
UNAVAILABLE, writes only when they certainly did not run). Three things are coalesced,
as etcd's grpc-proxy does:

- **Watches.** Client watches with the same key, range end, filters, prev_kv,
  progress_notify and fragment flags that start "now" (``start_revision`` 0) share one
  upstream watch: N such clients cost the cluster one watcher. A newcomer gets a
  ``created`` response at the shared watch's last revision and every event after it, in
  order; the upstream watch resumes from its last revision + 1 on another endpoint if its
  stream breaks. A watch from a given revision has an upstream watch of its own.
- **Lease keep-alives.** All client keep-alive streams share one upstream stream; a
  request for a lease whose keep-alive is in flight waits for that answer, and one made
  within ``TTL/6`` of the last answer is answered from it (TTL minus the time since), so a
  lease costs the cluster at most about six keep-alives per TTL however many clients
  keep it alive. A revoked lease must never be reported alive: a revoke through the proxy
  drops the remembered answer at once, and a revoke elsewhere (or expiry) deletes the
  lease's keys, which the proxy's keyspace watch sees (with ``prev_kv``, which names the
  lease). A lease the watch has not seen keys attached to could be revoked unseen, so its
  keep-alives are never answered from memory, nor is any while that watch is down.
- **Serializable ranges.** A serializable ``Range`` at the current revision is answered
  from a cache that the proxy's own watch over the whole keyspace invalidates (and so do
  writes forwarded by the proxy itself); without that watch (e.g. auth on and no rights)
  nothing is cached. Entries are keyed by the request and the caller's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from datastore.api.decodeguard import DecodeGuard
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.client.connection import (
    Pool,
    Retry,
    TLSConfig,
    moves_on,
    safe_to_retry,
)
from datastore.gateway.routes import ROUTES, Route

log = logging.getLogger("datastore.proxy")

WATCH = "/etcdserverpb.Watch/Watch"
KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"
RANGE = "/etcdserverpb.KV/Range"
REVOKE = "/etcdserverpb.Lease/LeaseRevoke"
WRITES = {"/etcdserverpb.KV/Put", "/etcdserverpb.KV/DeleteRange", "/etcdserverpb.KV/Txn",
          "/etcdserverpb.Lease/LeaseRevoke"}
REPEATABLE = {RANGE, "/etcdserverpb.Lease/LeaseTimeToLive", "/etcdserverpb.Lease/LeaseLeases",
              "/etcdserverpb.Cluster/MemberList", "/etcdserverpb.Maintenance/Status",
              "/etcdserverpb.Maintenance/Hash", "/etcdserverpb.Maintenance/HashKV",
              "/etcdserverpb.Maintenance/Alarm", "/etcdserverpb.Auth/AuthStatus",
              "/etcdserverpb.Auth/UserGet", "/etcdserverpb.Auth/UserList",
              "/etcdserverpb.Auth/RoleGet", "/etcdserverpb.Auth/RoleList",
              "/v3electionpb.Election/Leader"}
_SKIP_MD = ("grpc-", ":", "user-agent", "content-type", "te")
RESUME_BACKOFF_S = (0.05, 1.0)
KEEPALIVE_IDLE_S = 60.0  # an auth token's shared keep-alive stream closes after this idle


def _ident(b: bytes) -> bytes:
    return b


def forwarded_metadata(ctx: grpc.aio.ServicerContext) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in (ctx.invocation_metadata() or ())
            if not k.startswith(_SKIP_MD[:2]) and k not in _SKIP_MD[2:]]


@dataclass
class Stats:
    """Counters behind the proxy's /metrics (etcd's grpc-proxy names where they exist)."""

    watchers: int = 0  # client watches served
    upstream_watches: int = 0  # upstream watches open now
    events_coalesced: int = 0  # events delivered beyond the first subscriber
    keepalive_requests: int = 0  # from clients
    keepalive_upstream: int = 0  # sent to the cluster
    cache_hits: int = 0
    cache_misses: int = 0
    cache_keys: int = 0

    def render(self) -> str:
        rows = {
            "etcd_grpc_proxy_watchers_coalescing_total": self.watchers - self.upstream_watches,
            "etcd_grpc_proxy_events_coalescing_total": self.events_coalesced,
            "etcd_grpc_proxy_cache_hits_total": self.cache_hits,
            "etcd_grpc_proxy_cache_misses_total": self.cache_misses,
            "etcd_grpc_proxy_cache_keys_total": self.cache_keys,
            "datastore_grpc_proxy_client_watchers": self.watchers,
            "datastore_grpc_proxy_upstream_watchers": self.upstream_watches,
            "datastore_grpc_proxy_keepalive_requests_total": self.keepalive_requests,
            "datastore_grpc_proxy_keepalive_upstream_total": self.keepalive_upstream,
        }
        return "".join(f"{k} {v}\n" for k, v in rows.items())


# ---- watches ----------------------------------------------------------------------
@dataclass(eq=False)
class Subscriber:
    watch_id: int
    out: asyncio.Queue[rpc.WatchResponse | None]


class Broadcast:
    """One upstream watch fanned out to every subscriber, in upstream order."""

    def __init__(self, proxy: GrpcProxy, key: tuple[Any, ...], create: rpc.WatchCreateRequest,
                 metadata: list[tuple[str, Any]]) -> None:
        self.proxy, self.key = proxy, key
        self.create = rpc.WatchCreateRequest()
        self.create.CopyFrom(create)
        self.create.watch_id = 0
        self.metadata = metadata
        self.subs: list[Subscriber] = []
        self.header = rpc.ResponseHeader()
        self.next_rev = create.start_revision  # where a resumed upstream watch starts
        self.ready = asyncio.Event()
        self.failed: rpc.WatchResponse | None = None  # the upstream refused the watch
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        pause = RESUME_BACKOFF_S[0]
        counted = False
        try:
            while True:
                ep = self.proxy.pool.current
                create = rpc.WatchCreateRequest()
                create.CopyFrom(self.create)
                create.start_revision = self.next_rev

                async def requests(c: rpc.WatchCreateRequest = create
                                   ) -> AsyncIterator[rpc.WatchRequest]:
                    yield rpc.WatchRequest(create_request=c)
                    await asyncio.Event().wait()  # keep the request side open

                call = self.proxy.pool.channel(ep).stream_stream(
                    WATCH, request_serializer=rpc.WatchRequest.SerializeToString,
                    response_deserializer=rpc.WatchResponse.FromString)(
                        requests(), metadata=self.metadata)
                try:
                    async for resp in call:
                        if resp.created:
                            if resp.canceled:  # refused (e.g. permission denied)
                                self._fail(resp)
                                return
                            if not counted:
                                self.proxy.stats.upstream_watches += 1
                                counted = True
                            self.header.CopyFrom(resp.header)
                            if not self.next_rev:
                                self.next_rev = resp.header.revision + 1
                            self.ready.set()
                            pause = RESUME_BACKOFF_S[0]
                            continue
                        if resp.canceled:  # compacted or cancelled by the server
                            self._fail(resp)
                            return
                        self.header.CopyFrom(resp.header)
                        if resp.events:
                            self.next_rev = resp.events[-1].kv.mod_revision + 1
                        elif resp.header.revision >= self.next_rev:  # progress notification
                            self.next_rev = resp.header.revision + 1
                        self._fan_out(resp)
                    self.proxy.pool.failed(ep, "watch stream ended")  # the member went away
                except grpc.aio.AioRpcError as e:
                    if not (moves_on(e) or e.code() in (grpc.StatusCode.INTERNAL,
                                                        grpc.StatusCode.UNKNOWN,
                                                        grpc.StatusCode.CANCELLED)):
                        self._fail(rpc.WatchResponse(
                            header=self.header, created=not self.ready.is_set(), canceled=True,
                            cancel_reason=e.details() or ""))
                        return
                    self.proxy.pool.failed(ep, e.details() or "")
                    log.info("proxy watch resuming", extra={
                        "from": ep, "next_rev": self.next_rev, "reason": e.details()})
                finally:
                    call.cancel()
                await asyncio.sleep(pause)  # resume backoff, not synchronisation
                pause = min(pause * 2, RESUME_BACKOFF_S[1])
        finally:
            if counted:
                self.proxy.stats.upstream_watches -= 1

    def _fan_out(self, resp: rpc.WatchResponse) -> None:
        for i, sub in enumerate(self.subs):
            r = rpc.WatchResponse()
            r.CopyFrom(resp)
            r.watch_id = sub.watch_id
            sub.out.put_nowait(r)
            if i and resp.events:
                self.proxy.stats.events_coalesced += len(resp.events)

    def _fail(self, resp: rpc.WatchResponse) -> None:
        self.failed = resp
        self.ready.set()
        for sub in self.subs:
            r = rpc.WatchResponse()
            r.CopyFrom(resp)
            r.watch_id = sub.watch_id
            sub.out.put_nowait(r)
        self.subs.clear()
        self.proxy.broadcasts.pop(self.key, None)

    def remove(self, sub: Subscriber) -> None:
        with contextlib.suppress(ValueError):
            self.subs.remove(sub)
        if not self.subs:
            self.proxy.broadcasts.pop(self.key, None)
            self.task.cancel()


def _watch_key(c: rpc.WatchCreateRequest, token: Any) -> tuple[Any, ...]:
    shared = (c.key, c.range_end, tuple(c.filters), c.prev_kv, c.progress_notify, c.fragment,
              token)
    return shared if c.start_revision == 0 else (*shared, object())  # a private watch


# ---- keep-alives --------------------------------------------------------------------
class KeepAlives:
    """One upstream LeaseKeepAlive stream for every client of one identity (anonymous, or
    one auth token: the member checks who renews what); answers shared per lease. A
    token's stream closes after ``KEEPALIVE_IDLE_S`` without requests."""

    def __init__(self, proxy: GrpcProxy, token: str | None = None,
                 metadata: list[tuple[str, Any]] | None = None) -> None:
        self.proxy = proxy
        self.token = token
        self.metadata = metadata or []
        self.pending: dict[int, list[asyncio.Future[rpc.LeaseKeepAliveResponse]]] = {}
        self.last: dict[int, tuple[float, rpc.LeaseKeepAliveResponse]] = {}
        # Keys the keyspace watch has seen attached to each lease, never more than the
        # true number (keys attached before the watch began are not counted): a lease
        # counted here has keys, so its revoke will show as their deletion.
        self.keyed: dict[int, int] = {}
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.failures = 0  # upstream streams lost in a row

    async def keep_alive(self, lease_id: int) -> rpc.LeaseKeepAliveResponse:
        self.proxy.stats.keepalive_requests += 1
        self.proxy.cache.start()  # the keyspace watch that sees revokes
        hit = self.last.get(lease_id) if self.proxy.cache.live and self.keyed.get(lease_id) else None
        if hit is not None:
            age = time.monotonic() - hit[0]
            if hit[1].TTL > 0 and age < hit[1].TTL / 6:
                r = rpc.LeaseKeepAliveResponse()
                r.CopyFrom(hit[1])
                r.TTL = max(1, hit[1].TTL - int(age))
                return r
        fut: asyncio.Future[rpc.LeaseKeepAliveResponse] = asyncio.get_running_loop().create_future()
        waiters = self.pending.setdefault(lease_id, [])
        waiters.append(fut)
        if len(waiters) == 1:
            self.queue.put_nowait(lease_id)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        return await fut

    def seen(self, events: Iterable[Any]) -> None:
        """Keyspace events, in order: count attachments, forget answers on detachment."""
        for ev in events:
            new = ev.kv.lease if ev.type == ev.PUT else 0
            if ev.HasField("prev_kv"):
                old = ev.prev_kv.lease
            elif ev.type == ev.PUT:
                old = 0  # a new key
            else:  # a deletion whose lease we cannot know: trust nothing remembered
                self.forget_all()
                continue
            if old == new:
                continue
            if old:
                self.last.pop(old, None)  # maybe revoked: ask the cluster next time
                n = self.keyed.pop(old, 0) - 1
                if n > 0:
                    self.keyed[old] = n
            if new:
                self.keyed[new] = self.keyed.get(new, 0) + 1

    def forget_all(self) -> None:
        """The watch lost continuity: no lease is known to have keys any more."""
        self.keyed.clear()
        self.last.clear()

    async def _run(self) -> None:
        ep = self.proxy.pool.current

        queue = self.queue

        async def requests() -> AsyncIterator[rpc.LeaseKeepAliveRequest]:
            while True:
                try:
                    lease_id = await asyncio.wait_for(queue.get(), KEEPALIVE_IDLE_S)
                except TimeoutError:
                    if self.token is not None and not self.pending:
                        return  # an idle token's stream: closed (the member ends it too)
                    continue
                self.proxy.stats.keepalive_upstream += 1
                yield rpc.LeaseKeepAliveRequest(ID=lease_id)

        call = self.proxy.pool.channel(ep).stream_stream(
            KEEPALIVE, request_serializer=rpc.LeaseKeepAliveRequest.SerializeToString,
            response_deserializer=rpc.LeaseKeepAliveResponse.FromString)(
                requests(), metadata=self.metadata)
        try:
            async for resp in call:
                self.failures = 0
                if resp.TTL > 0:
                    self.last[resp.ID] = (time.monotonic(), resp)
                else:
                    self.last.pop(resp.ID, None)
                for fut in self.pending.pop(resp.ID, []):
                    if not fut.done():
                        fut.set_result(resp)
        except grpc.aio.AioRpcError as e:
            if moves_on(e):  # ask the next endpoint for everyone still waiting
                self.proxy.pool.failed(ep, e.details() or "")
                self.queue = asyncio.Queue()
                for lease_id in self.pending:
                    self.queue.put_nowait(lease_id)
                # one line per outage, not one per retry; the pause doubles while it lasts
                (log.info if self.failures == 0 else log.debug)(
                    "proxy keep-alive stream moves on", extra={
                        "from": ep, "reason": e.details(), "waiting": len(self.pending)})
                pause = min(RESUME_BACKOFF_S[0] * 2 ** self.failures, RESUME_BACKOFF_S[1])
                self.failures += 1
                await asyncio.sleep(pause)  # resume backoff, not synchronisation
                self.task = asyncio.get_running_loop().create_task(self._run())
                return
            for f in [f for fs in self.pending.values() for f in fs]:
                if not f.done():
                    f.set_exception(e)
            self.pending.clear()
        finally:
            call.cancel()
        if self.pending:  # asked for while the stream was closing: a new one for them
            self.queue = asyncio.Queue()
            for lease_id in self.pending:
                self.queue.put_nowait(lease_id)
            self.task = asyncio.get_running_loop().create_task(self._run())
        elif self.token is not None and self.proxy.token_keepalives.get(self.token) is self:
            del self.proxy.token_keepalives[self.token]


# ---- serializable range cache -------------------------------------------------------
class RangeCache:
    """Serializable reads, kept until the keyspace watch (or a write here) says otherwise.

    The same watch (``prev_kv`` on) feeds :meth:`KeepAlives.seen`, so it runs once a
    keep-alive arrives even with the range cache off.
    """

    def __init__(self, proxy: GrpcProxy, max_entries: int = 4096) -> None:
        self.proxy = proxy
        self.max_entries = max_entries
        self.entries: dict[tuple[bytes, Any], bytes] = {}
        self.gen = 0
        self.live = False  # the invalidating watch is established
        self.seen_rev = 0  # highest revision the invalidating watch has passed
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    def invalidate(self) -> None:
        self.gen += 1
        self.entries.clear()
        self.proxy.stats.cache_keys = 0

    async def _run(self) -> None:
        pause = RESUME_BACKOFF_S[0]
        while True:
            ep = self.proxy.pool.current
            start = self.seen_rev + 1 if self.seen_rev else 0

            async def requests(s: int = start) -> AsyncIterator[rpc.WatchRequest]:
                yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=b"\0", range_end=b"\0", start_revision=s, prev_kv=True))
                await asyncio.Event().wait()

            call = self.proxy.pool.channel(ep).stream_stream(
                WATCH, request_serializer=rpc.WatchRequest.SerializeToString,
                response_deserializer=rpc.WatchResponse.FromString)(requests())
            try:
                async for resp in call:
                    if resp.canceled:
                        log.info("proxy range cache disabled: its watch was refused",
                                 extra={"reason": resp.cancel_reason})
                        self.proxy.forget_all_keepalives()
                        return
                    if resp.created:
                        if not start:  # not a resumption: nothing seen before counts
                            self.proxy.forget_all_keepalives()
                        self.seen_rev = max(self.seen_rev, resp.header.revision)
                        self.live = True
                        pause = RESUME_BACKOFF_S[0]
                        continue
                    if resp.events:
                        self.invalidate()
                        self.proxy.keepalives_seen(resp.events)
                        self.seen_rev = max(self.seen_rev, resp.events[-1].kv.mod_revision)
            except grpc.aio.AioRpcError as e:
                if moves_on(e):
                    self.proxy.pool.failed(ep, e.details() or "")
            finally:
                call.cancel()
                self.live = False
                self.invalidate()
            await asyncio.sleep(pause)  # resume backoff, not synchronisation
            pause = min(pause * 2, RESUME_BACKOFF_S[1])

    def lookup(self, req: rpc.RangeRequest, raw: bytes, token: Any) -> bytes | None:
        if not req.serializable or req.revision or not self.live:
            return None
        hit = self.entries.get((raw, token))
        if hit is None:
            self.proxy.stats.cache_misses += 1
        else:
            self.proxy.stats.cache_hits += 1
        return hit

    def store(self, raw: bytes, token: Any, resp_raw: bytes, gen: int) -> None:
        if gen != self.gen or not self.live:
            return  # something changed while the read was in flight
        resp = rpc.RangeResponse.FromString(resp_raw)
        if resp.header.revision < self.seen_rev:
            return  # the invalidating watch is ahead of this answer: it may be stale
        if len(self.entries) >= self.max_entries:
            self.entries.pop(next(iter(self.entries)))
        self.entries[(raw, token)] = resp_raw
        self.proxy.stats.cache_keys = len(self.entries)


# ---- the proxy ----------------------------------------------------------------------
@dataclass
class ProxyConfig:
    endpoints: list[str]
    listen_addr: str = "127.0.0.1:23790"
    upstream_tls: TLSConfig | None = None
    server_credentials: grpc.ServerCredentials | None = None
    dial_timeout: float = 5.0
    range_cache: bool = True


class GrpcProxy(grpc.GenericRpcHandler):
    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.pool = Pool(cfg.endpoints, tls=cfg.upstream_tls, timeout=cfg.dial_timeout)
        self.stats = Stats()
        self.broadcasts: dict[tuple[Any, ...], Broadcast] = {}
        self.keepalives = KeepAlives(self)  # anonymous callers
        self.token_keepalives: dict[str, KeepAlives] = {}  # by auth token
        self.cache = RangeCache(self)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self.server = grpc.aio.server(handlers=[self], interceptors=[DecodeGuard()], options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_concurrent_streams", 2**31 - 1),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.so_reuseport", 0)])
        if self.cfg.server_credentials is not None:
            self.port = self.server.add_secure_port(self.cfg.listen_addr,
                                                    self.cfg.server_credentials)
        else:
            self.port = self.server.add_insecure_port(self.cfg.listen_addr)
        await self.server.start()
        self.cache.start()  # the keyspace watch: leases are only seen keyed from here on
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0.5)
        for b in list(self.broadcasts.values()):
            b.task.cancel()
        for t in (self.keepalives.task, self.cache.task,
                  *(k.task for k in self.token_keepalives.values())):
            if t is not None:
                t.cancel()
        await self.pool.close()

    # grpc.GenericRpcHandler
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        route = _BY_METHOD.get(method)
        if route is None:
            return None
        if method == WATCH:
            return grpc.stream_stream_rpc_method_handler(
                self._watch, request_deserializer=rpc.WatchRequest.FromString,
                response_serializer=rpc.WatchResponse.SerializeToString)
        if method == KEEPALIVE:
            return grpc.stream_stream_rpc_method_handler(
                self._keepalive, request_deserializer=rpc.LeaseKeepAliveRequest.FromString,
                response_serializer=rpc.LeaseKeepAliveResponse.SerializeToString)
        if route.kind == "unary":
            req_type = route.request

            async def unary(raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
                return await self._unary(method, raw, ctx)
            # decode to refuse garbage as the cluster would; forward the original bytes
            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=_checked(req_type), response_serializer=_ident)

        async def stream(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            call = self.pool.channel().unary_stream(
                method, request_serializer=_ident, response_deserializer=_ident)(
                    raw, metadata=forwarded_metadata(ctx), timeout=ctx.time_remaining())
            try:
                async for r in call:
                    yield r
            except grpc.aio.AioRpcError as e:
                if moves_on(e):
                    self.pool.failed(self.pool.current, e.details() or "")
                await ctx.abort(e.code(), e.details() or "")
            finally:
                call.cancel()
        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=_checked(route.request), response_serializer=_ident)

    async def _unary(self, method: str, raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        md = forwarded_metadata(ctx)
        token = dict(md).get("token")
        gen = self.cache.gen
        cacheable = False
        if method == RANGE and self.cfg.range_cache:
            req = rpc.RangeRequest.FromString(raw)
            if req.serializable and not req.revision:
                self.cache.start()
                hit = self.cache.lookup(req, raw, token)
                if hit is not None:
                    return hit
                cacheable = self.cache.live
        policy = Retry.REPEATABLE if method in REPEATABLE else Retry.NON_REPEATABLE
        timeout = ctx.time_remaining()
        last: grpc.aio.AioRpcError | None = None
        for _ in range(len(self.pool.endpoints)):
            ep = self.pool.current
            try:
                resp: bytes = await self.pool.channel(ep).unary_unary(
                    method, request_serializer=_ident, response_deserializer=_ident)(
                        raw, metadata=md, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                last = e
                if moves_on(e):
                    self.pool.failed(ep, e.details() or "")
                if not safe_to_retry(e, policy):
                    break
                continue
            if method in WRITES:
                self.cache.invalidate()
                if method == REVOKE:  # answered keep-alives for it are no longer true
                    revoked = rpc.LeaseRevokeRequest.FromString(raw).ID
                    for ka in self.all_keepalives():
                        ka.last.pop(revoked, None)
            elif cacheable:
                self.cache.store(raw, token, resp, gen)
            return resp
        assert last is not None
        if method in WRITES:
            self.cache.invalidate()  # it may have been applied
        await ctx.abort(last.code(), last.details() or "")
        raise AssertionError("unreachable")

    async def _watch(self, requests: AsyncIterator[rpc.WatchRequest],
                     ctx: grpc.aio.ServicerContext) -> AsyncIterator[rpc.WatchResponse]:
        out: asyncio.Queue[rpc.WatchResponse | None] = asyncio.Queue()
        mine: dict[int, tuple[Broadcast, Subscriber]] = {}
        md = forwarded_metadata(ctx)
        token = dict(md).get("token")
        auto_ids = itertools.count(0)

        async def create(c: rpc.WatchCreateRequest) -> None:
            wid = c.watch_id
            if not wid:
                wid = next(auto_ids)
                while wid in mine:
                    wid = next(auto_ids)
            key = _watch_key(c, token)
            b = self.broadcasts.get(key)
            if b is None:
                b = Broadcast(self, key, c, md)
                self.broadcasts[key] = b
            await b.ready.wait()
            if b.failed is not None:
                r = rpc.WatchResponse()
                r.CopyFrom(b.failed)
                r.watch_id = wid
                out.put_nowait(r)
                return
            sub = Subscriber(wid, out)  # type: ignore[arg-type]
            b.subs.append(sub)
            mine[wid] = (b, sub)
            self.stats.watchers += 1
            # created at the shared watch's revision; every later event follows, in order
            out.put_nowait(rpc.WatchResponse(header=b.header, watch_id=wid, created=True))

        async def recv() -> None:
            try:
                async for req in requests:
                    kind = req.WhichOneof("request_union")
                    if kind == "create_request":
                        await create(req.create_request)
                    elif kind == "cancel_request":
                        wid = req.cancel_request.watch_id
                        entry = mine.pop(wid, None)
                        if entry is not None:
                            entry[0].remove(entry[1])
                            self.stats.watchers -= 1
                            out.put_nowait(rpc.WatchResponse(header=entry[0].header,
                                                             watch_id=wid, canceled=True))
                    elif kind == "progress_request":
                        hdr = rpc.ResponseHeader()
                        revs = [b.next_rev - 1 for b, _ in mine.values()]
                        if mine:
                            hdr.CopyFrom(next(iter(mine.values()))[0].header)
                            hdr.revision = min(revs)
                        out.put_nowait(rpc.WatchResponse(header=hdr, watch_id=-1))
            except Exception:
                out.put_nowait(None)
                raise

        task = asyncio.get_running_loop().create_task(recv())
        try:
            while True:
                resp = await out.get()
                if resp is None:
                    return
                yield resp
        finally:
            task.cancel()
            for b, sub in mine.values():
                b.remove(sub)
                self.stats.watchers -= 1
            mine.clear()

    def all_keepalives(self) -> list[KeepAlives]:
        return [self.keepalives, *self.token_keepalives.values()]

    def forget_all_keepalives(self) -> None:
        for ka in self.all_keepalives():
            ka.forget_all()

    def keepalives_seen(self, events: Iterable[Any]) -> None:
        for ka in self.all_keepalives():
            ka.seen(events)

    def _keepalives_for(self, ctx: grpc.aio.ServicerContext) -> KeepAlives:
        md = forwarded_metadata(ctx)
        token = dict(md).get("token")
        if token is None:
            return self.keepalives
        ka = self.token_keepalives.get(token)
        if ka is None:
            ka = self.token_keepalives[token] = KeepAlives(self, token, md)
        return ka

    async def _keepalive(self, requests: AsyncIterator[rpc.LeaseKeepAliveRequest],
                         ctx: grpc.aio.ServicerContext) -> AsyncIterator[rpc.LeaseKeepAliveResponse]:
        async for req in requests:
            try:
                yield await self._keepalives_for(ctx).keep_alive(req.ID)
            except grpc.aio.AioRpcError as e:
                await ctx.abort(e.code(), e.details() or "")


# The gateway's routes, plus the methods etcd serves over gRPC only.
_BY_METHOD = {r.full_method: r for r in ROUTES.values()} | {
    "/etcdserverpb.Maintenance/HashKV": Route("/etcdserverpb.Maintenance/HashKV", rpc.HashKVRequest,
                                              rpc.HashKVResponse, "unary"),
    "/etcdserverpb.KV/RangeStream": Route("/etcdserverpb.KV/RangeStream", rpc.RangeRequest,
                                          rpc.RangeStreamResponse, "server_stream"),
}


def _checked(t: Any) -> Callable[[bytes], bytes]:
    def decode(raw: bytes) -> bytes:
        t.FromString(raw)  # raises on garbage: DecodeGuard answers INTERNAL like the cluster
        return raw
    return decode


def parse_endpoints(s: str | Iterable[str]) -> list[str]:
    items = s.split(",") if isinstance(s, str) else list(s)
    return [e.strip() for e in items if e.strip()]
