"""Endpoints, channels and the failover/retry rule for unary calls.

One ``grpc.aio`` channel per endpoint, created on first use. Requests go to the
*current* endpoint; an answer that says "this member cannot serve you" (UNAVAILABLE,
``etcdserver: no leader``, a learner's refusal) makes the pool move on to the next one.

Whether the failed call is then retried follows etcd's clientv3 (retry_interceptor.go):
*repeatable* calls (reads, lease calls, member list, status...) are retried on any
UNAVAILABLE; *non-repeatable* calls (writes, member changes, compaction, defragment) only
when the request provably never ran: the connection could not be made, or the member
rejected it up front (no leader, learner). A write that may have been applied is never
sent twice; the caller gets the error and decides.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from datastore import errors as etcd_errors
from datastore.client.errors import ClientClosedError, from_rpc_error

log = logging.getLogger("datastore.client")
T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...] | None

# gRPC metadata sent with every call made from the current task (and tasks it starts):
# a server-side user of this client (the Lock/Election services) forwards its caller's
# auth token this way, so the calls run with the caller's permissions.
CALL_METADATA: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("CALL_METADATA", default=())

# The member rejected the request before executing it: safe to send elsewhere.
_REJECTED_UNEXECUTED = frozenset({
    etcd_errors.ErrNoLeader.message,
    etcd_errors.ErrNotSupportedForLearner.message,
    etcd_errors.ErrNotCapable.message,
})
# grpc's wording when no connection could be made (the request never left the client).
_NOT_SENT_MARKERS = ("failed to connect to all addresses", "Connection refused",
                     "no address available", "no connection available")
BACKOFF_START, BACKOFF_MAX = 0.05, 0.5
CHANNEL_OPTIONS = [
    # A member that comes back must be usable again within about a second.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Notice a silently dead member on a long-lived stream (watch, keep-alive).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


# The member refused the token, not the request: a client with a password logs in again
# and resends (clientv3's shouldRefreshToken).
_TOKEN_REFUSED = frozenset({
    etcd_errors.ErrInvalidAuthToken.message,
    etcd_errors.ErrAuthOldRevision.message,
    etcd_errors.ErrUserEmpty.message,
})


class Retry(enum.Enum):
    REPEATABLE = "repeatable"  # idempotent: retried after any UNAVAILABLE
    NON_REPEATABLE = "non_repeatable"  # retried only if it certainly did not run


@dataclass(frozen=True)
class TLSConfig:
    """PEM files for TLS: the CA that signed the servers, and optionally a client cert/key."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: str | None) -> bytes | None:
            return Path(p).read_bytes() if p else None
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


def strip_scheme(ep: str) -> str:
    for scheme in ("http://", "https://", "unix://"):
        if ep.startswith(scheme):
            return ep[len(scheme):]
    return ep


def moves_on(e: grpc.RpcError) -> bool:
    """This member cannot serve requests now: use the next endpoint."""
    code = e.code() if hasattr(e, "code") else None
    return code == grpc.StatusCode.UNAVAILABLE or (e.details() or "") in _REJECTED_UNEXECUTED


def not_sent(e: grpc.RpcError) -> bool:
    details = e.details() or ""
    return details in _REJECTED_UNEXECUTED or any(m in details for m in _NOT_SENT_MARKERS)


def safe_to_retry(e: grpc.RpcError, policy: Retry) -> bool:
    if policy is Retry.REPEATABLE:
        return moves_on(e)
    return not_sent(e)


def token_refused(details: str) -> bool:
    """Does this error (or watch cancel reason) say the token, not the request, was bad?
    Only a client with a password acts on it (``Pool.forget_token``)."""
    return any(m in details for m in _TOKEN_REFUSED)


class Pool:
    """The endpoints of one Client, a channel to each, and its auth token if it logs in."""

    def __init__(self, endpoints: Sequence[str] | str, tls: TLSConfig | None = None,
                 timeout: float = 5.0, user: str | None = None,
                 password: str | None = None) -> None:
        eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not eps:
            raise ValueError("Client needs at least one endpoint, e.g. ['127.0.0.1:2379']")
        self.endpoints = [strip_scheme(e) for e in eps]
        self.tls = tls
        self.timeout = timeout
        self._index = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.learners: set[str] = set()  # endpoints that refused a request as a learner
        self.closed = False
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        self.credentials = (user, password) if user is not None else None
        self._token: str | None = None
        self._login: asyncio.Task[str] | None = None  # the one login in flight
        self.logins = 0  # Authenticate calls made (for observability and tests)

    @property
    def current(self) -> str:
        return self.endpoints[self._index]

    def add_endpoints(self, endpoints: Sequence[str]) -> None:
        """Append the endpoints not already here (the current one stays current)."""
        for e in map(strip_scheme, endpoints):
            if e not in self.endpoints:
                self.endpoints.append(e)

    def channel(self, endpoint: str | None = None) -> grpc.aio.Channel:
        if self.closed:
            raise ClientClosedError()
        ep = strip_scheme(endpoint) if endpoint else self.current
        ch = self._channels.get(ep)
        if ch is None:
            if self.tls is not None:
                ch = grpc.aio.secure_channel(ep, self.tls.credentials(), options=CHANNEL_OPTIONS)
            else:
                ch = grpc.aio.insecure_channel(ep, options=CHANNEL_OPTIONS)
            self._channels[ep] = ch
        return ch

    def failed(self, endpoint: str, why: str) -> None:
        """``endpoint`` could not serve a request: later requests go to the next one.

        A member that refused as a learner is remembered and passed over while any other
        endpoint is left, so learners are not asked again for what they refuse."""
        if etcd_errors.ErrNotSupportedForLearner.message in why:
            self.learners.add(endpoint)
        if endpoint != self.current or len(self.endpoints) == 1:
            return
        n = len(self.endpoints)
        order = [(self._index + i) % n for i in range(1, n + 1)]
        voters = [i for i in order if self.endpoints[i] not in self.learners]
        self._index = (voters or order)[0]
        log.info("client endpoint failover", extra={
            "failed": endpoint, "next": self.current, "reason": why})

    async def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The metadata to send: a forwarded caller's (CALL_METADATA), else this client's
        token, logging in first if it has none (concurrent callers share one login)."""
        forwarded = CALL_METADATA.get()
        if forwarded or self.credentials is None:
            return forwarded or None
        if self._token is None:
            if self._login is None or self._login.done():
                self._login = asyncio.get_running_loop().create_task(self._authenticate())
            await asyncio.shield(self._login)
        assert self._token is not None
        return (("token", self._token),)

    def forget_token(self, md: tuple[tuple[str, str], ...] | None) -> bool:
        """The member refused the token sent in ``md``: the next call logs in again.
        False when this client has no password to log in with."""
        if self.credentials is None:
            return False
        sent = dict(md or ()).get("token")
        if sent is not None and sent == self._token:
            self._token = None
        return True

    async def _authenticate(self) -> str:
        from datastore.api.etcdserverpb import rpc_pb2 as rpc
        from datastore.api.etcdserverpb import rpc_pb2_grpc as stubs

        assert self.credentials is not None
        name, password = self.credentials
        req = rpc.AuthenticateRequest(name=name, password=password)

        async def invoke(ch: grpc.aio.Channel, t: float, _md: object) -> rpc.AuthenticateResponse:
            return await stubs.AuthStub(ch).Authenticate(req, timeout=t)
        r = await self.call(invoke, Retry.REPEATABLE, login=False)
        self.logins += 1
        self._token = r.token
        return r.token

    async def close(self) -> None:
        self.closed = True
        chans, self._channels = list(self._channels.values()), {}
        for ch in chans:
            await ch.close()

    async def call(self, invoke: Callable[[grpc.aio.Channel, float, Metadata], Awaitable[T]],
                   policy: Retry, endpoint: str | None = None, budget: float | None = None,
                   login: bool = True) -> T:
        """Run ``invoke(channel, per_try_timeout, metadata)`` with failover and etcd's
        retry rule. A refused token is renewed and the call resent once: the member
        refused it before running anything.

        With ``endpoint`` set, only that member is asked (no failover)."""
        deadline = time.monotonic() + (self.timeout if budget is None else budget)
        backoff = BACKOFF_START
        tried_this_round = 0
        relogged = False
        while True:
            ep = strip_scheme(endpoint) if endpoint else self.current
            if not login:
                md = None
            elif self.credentials is None:
                md = CALL_METADATA.get() or None
            else:
                md = await self.metadata()
            remaining = deadline - time.monotonic()
            try:
                return await invoke(self.channel(ep), max(remaining, 0.001), md)
            except grpc.aio.AioRpcError as e:
                if (login and not relogged and token_refused(e.details() or "")
                        and self.forget_token(md)):
                    relogged = True
                    continue
                err = from_rpc_error(e, ep)
                if endpoint is None and (moves_on(e) or e.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                    # A member that let the deadline pass may be cut off from the cluster:
                    # the next call tries another one.
                    self.failed(ep, err.details)
                retry = endpoint is None and safe_to_retry(e, policy)
                if not retry or time.monotonic() >= deadline:
                    raise err from None
                tried_this_round += 1
                if tried_this_round >= len(self.endpoints):
                    # Every member refused once: give the cluster time (e.g. an election).
                    tried_this_round = 0
                    pause = min(backoff, max(deadline - time.monotonic(), 0))
                    await asyncio.sleep(pause)  # retry backoff, not synchronisation
                    backoff = min(backoff * 2, BACKOFF_MAX)


