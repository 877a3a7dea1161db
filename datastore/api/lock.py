"""v3lockpb.Lock: etcd's lock service, the Mutex recipe run server-side.

Like etcd (server/etcdserver/api/v3lock), the service is a client of its own member: it
runs ``datastore.client.recipes.Mutex`` through a ``datastore.client.Client`` connected to
the member's client URL, so every step takes the ordinary KV/Watch paths (raft, leader
forwarding, quotas) and the keys are laid out exactly as Go's ``clientv3/concurrency``
does: ``<name>/<lease hex>``. A Python holder, an ``etcdctl lock`` holder and a Lock RPC
caller therefore exclude each other.

Semantics kept from etcd 3.4 (e2e/test_lock_election.py checks them against it):
- the caller's lease owns the key; lease 0 means "grant one with etcd's 60 s session
  TTL", never kept alive (etcd orphans the session), so such a lock lasts 60 s at most;
- locking again with the lease that holds the lock returns the same key at once;
- a caller that goes away while waiting has its waiter key deleted;
- Unlock just deletes the key (a missing key is not an error);
- errors reach the caller as gRPC UNKNOWN with etcd's message, as etcd 3.4 sends them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlparse

import grpc

from datastore.api.v3lockpb import v3lock_pb2 as pb
from datastore.api.v3lockpb import v3lock_pb2_grpc
from datastore.auth.grpcctx import forward_credentials
from datastore.client import Client, TLSConfig
from datastore.client.errors import ClientError
from datastore.client.recipes import Mutex, Session
from datastore.client.recipes.waiting import lease_key

if TYPE_CHECKING:
    from datastore.server.etcdserver import EtcdServer

log = logging.getLogger("datastore.api.lock")

SESSION_TTL = 60  # etcd's concurrency.NewSession default TTL, used when the caller gives no lease
SELF_CLIENT_TIMEOUT = 10.0  # s per request: above the server's own request timeout (7 s)
CLEANUP_TIMEOUT = 2.0  # s for deleting the key of a caller that went away
T = TypeVar("T")


class RecipeError(Exception):
    """A service-level failure; etcd 3.4 returns these as UNKNOWN with this text."""


def self_endpoint(server: EtcdServer) -> tuple[str, TLSConfig | None]:
    """Where and how the member reaches its own client port.

    A plain-HTTP client URL is preferred; with only https ones the member dials with its
    own certificate (as the trust root when self-signed by --auto-tls, and as the client
    certificate when the listener demands one). A wildcard host is dialled on loopback.
    """
    urls = list(server.cfg.listen_client_urls)
    url = urlparse(next((u for u in urls if u.startswith("http://")), urls[0]))
    host = url.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    target = f"[{host}]:{url.port}" if ":" in host else f"{host}:{url.port}"
    tls = getattr(server.cfg, "client_tls", None)  # present once TLS is configurable
    if url.scheme != "https" or tls is None:
        return target, None
    return target, TLSConfig(ca_file=tls.trusted_ca_file or tls.cert_file,
                             cert_file=tls.cert_file or None, key_file=tls.key_file or None)


class SelfClient:
    """The member's client of itself (etcd's v3client), created on first use.

    One Client serves every Lock/Election call of the member; it lives as long as the
    server process.
    """

    def __init__(self, server: EtcdServer) -> None:
        self.server = server
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            target, tls = self_endpoint(self.server)
            self._client = Client([target], timeout=SELF_CLIENT_TIMEOUT, tls=tls)
            log.info("lock/election services use the member's own client URL",
                     extra={"target": target, "tls": tls is not None})
        return self._client

    async def session(self, lease: int) -> Session:
        """etcd's NewSession(WithLease(lease)) then Orphan(): the caller's lease, not kept alive.

        The session is never opened, so no keep-alive runs; lease 0 gets a fresh lease.
        """
        if not lease:
            lease = (await self.client.lease_grant(SESSION_TTL)).ID
        return Session(self.client, ttl=SESSION_TTL, lease_id=lease)


async def withdraw_if_abandoned(work: Coroutine[Any, Any, T], client: Client, key: bytes) -> T:
    """Run a Mutex/Election wait; if the caller goes away first, delete our key.

    The recipe cleans up when cancelled while waiting, but a cancellation can also land
    after its first txn committed our key and before the answer arrived; the key left
    behind would block the lock or election for as long as the caller keeps its lease.
    (Caveat: cancelling a repeated Lock/Campaign by the lease that already holds it, in
    that same instant, releases it.)
    """
    task = asyncio.ensure_future(work)
    # An exception the recipe raises after we stopped listening is expected: retrieve it.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        # Bounded, and cancellable by a second cancel: at shutdown the member that would
        # answer these calls is going away.
        await asyncio.wait({task}, timeout=CLEANUP_TIMEOUT)
        try:
            await asyncio.wait_for(client.delete(key), CLEANUP_TIMEOUT)
        except (ClientError, TimeoutError) as e:
            log.warning("could not delete an abandoned lock/election key", extra={
                "key": key.decode(errors="replace"),
                "error": e.details if isinstance(e, ClientError) else "timed out"})
        raise


async def fail(ctx: grpc.aio.ServicerContext, e: Exception) -> NoReturn:
    """etcd 3.4 hands every recipe/client error to gRPC as a plain error: UNKNOWN + text."""
    details = e.details if isinstance(e, ClientError) else str(e)
    await ctx.abort(grpc.StatusCode.UNKNOWN, details or "")
    raise AssertionError("unreachable")


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, server: EtcdServer, client: SelfClient | None = None) -> None:
        self.s = server
        self.c = client or SelfClient(server)

    async def Lock(self, r: pb.LockRequest, ctx: grpc.aio.ServicerContext) -> pb.LockResponse:
        forward_credentials(self.s, ctx)  # the recipe's calls run with the caller's permissions
        try:
            session = await self.c.session(r.lease)
            m = Mutex(session, r.name)
            await withdraw_if_abandoned(m.lock(), self.c.client,
                                        lease_key(r.name + b"/", session.lease_id))
        except ClientError as e:
            await fail(ctx, e)
        return pb.LockResponse(header=m.header, key=m.key)

    async def Unlock(self, r: pb.UnlockRequest, ctx: grpc.aio.ServicerContext) -> pb.UnlockResponse:
        forward_credentials(self.s, ctx)
        try:
            resp = await self.c.client.delete(r.key)
        except ClientError as e:
            await fail(ctx, e)
        return pb.UnlockResponse(header=resp.header)
