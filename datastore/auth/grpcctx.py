"""Who is calling: etcd's AuthInfoFromCtx for the gRPC services.

Call these only when ``server.auth.enabled`` (the services check that one boolean first,
so a cluster without auth pays nothing). The token comes from the ``token`` metadata key
(what clientv3 sends) or ``authorization`` (what the JSON gateway forwards); without a
token, and with ``--client-cert-auth``, the verified client certificate's common name is
the user, as in etcd (except for requests relayed by a gateway, which etcd marks with
``grpcgateway-accept``: the gateway's own certificate must not grant anything).
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING

import grpc

from datastore import errors
from datastore.api.internalpb.internal_pb2 import InternalRaftRequest
from datastore.auth.tokens import AuthInfo

if TYPE_CHECKING:
    from datastore.server.etcdserver import EtcdServer

TOKEN_KEY = "token"
GATEWAY_TOKEN_KEY = "authorization"
GATEWAY_MARK = "grpcgateway-accept"
# Calls the member makes to itself for Lock/Election: never authenticated by the member's
# own certificate; a caller known by its certificate is named with a per-process secret
# that only this process's client sends.
FORWARDED_MARK = "datastore-forwarded"
FORWARDED_USER = "datastore-forwarded-user"
_FORWARD_SECRET = secrets.token_hex(16)


async def auth_info(s: EtcdServer, ctx: grpc.aio.ServicerContext) -> AuthInfo | None:
    """The caller's identity; raises ErrInvalidAuthToken for a token we do not accept."""
    md = ctx.invocation_metadata() or ()
    token: str | None = None
    gateway_token: str | None = None
    via_gateway = False
    forwarded_user: str | None = None
    for k, v in md:
        if k == TOKEN_KEY and token is None:
            token = v if isinstance(v, str) else v.decode("latin-1")
        elif k == GATEWAY_TOKEN_KEY and gateway_token is None:
            gateway_token = v if isinstance(v, str) else v.decode("latin-1")
        elif k in (GATEWAY_MARK, FORWARDED_MARK):
            via_gateway = True
        elif k == FORWARDED_USER and isinstance(v, str):
            secret, _, name = v.partition(":")
            if hmac.compare_digest(secret.encode(), _FORWARD_SECRET.encode()):
                forwarded_user = name
    if token is None and gateway_token is not None:
        token = gateway_token.removeprefix("Bearer ")
    store = s.auth
    if token is not None:
        ai = await store.tokens.info(token, store.revision, lambda i: _wait_applied(s, i))
        if ai is None:
            raise errors.ErrInvalidAuthToken()
        return ai
    if forwarded_user is not None:
        return AuthInfo(forwarded_user, store.revision)
    if s.cfg.client_tls.client_cert_auth and not via_gateway:
        cn = (ctx.auth_context() or {}).get("x509_common_name")
        if cn:
            return AuthInfo(cn[0].decode("utf-8", "replace"), store.revision)
    return None


async def _wait_applied(s: EtcdServer, index: int) -> bool:
    """A simple token names the log index of its Authenticate: this member must have it."""
    if index <= s.applier.applied_index:
        return True
    try:
        await s.read_barrier()  # everything committed before now is applied after this
    except errors.EtcdError:
        return False
    return index <= s.applier.applied_index


async def with_header(s: EtcdServer, ctx: grpc.aio.ServicerContext,
                      req: InternalRaftRequest) -> InternalRaftRequest:
    """Stamp who asks on a proposal: apply checks permissions against it (etcd's header).

    With auth off the header stays empty (auth revision 0). It is still added: a request
    checked while auth was off but applied after ``auth enable`` must be refused (etcd:
    user name is empty), and only internal proposals (lease expiry, ...) go without one.
    """
    req.header.SetInParent()
    if s.auth.enabled:
        ai = await auth_info(s, ctx)
        if ai is not None:
            req.header.username = ai.username
            req.header.auth_revision = ai.revision
    return req


async def require_auth_info(s: EtcdServer, ctx: grpc.aio.ServicerContext) -> AuthInfo | None:
    """Any authenticated caller (etcd 3.5.28+/3.6's requireAuthInfo: Status, the alarm
    list, MemberList, lease grant/revoke/time-to-live); None while auth is off."""
    if not s.auth.enabled:
        return None
    ai = await auth_info(s, ctx)
    if ai is None:
        raise errors.ErrUserEmpty()
    return ai


async def require_admin(s: EtcdServer, ctx: grpc.aio.ServicerContext) -> None:
    """The calls etcd keeps to root outside the log (maintenance, membership)."""
    if s.auth.enabled:
        s.auth.check_admin(await auth_info(s, ctx))


def forward_credentials(s: EtcdServer, ctx: grpc.aio.ServicerContext) -> None:
    """Make the member's own client calls in this task carry the caller's token.

    etcd's Lock and Election services act as their caller (v3client hands the incoming
    context, token included, to the KV calls); ours run the recipes through a client of
    the member itself, so the token rides along in that client's call metadata.
    """
    from datastore.client.connection import CALL_METADATA

    md = [(k, v) for k, v in (ctx.invocation_metadata() or ())
          if k in (TOKEN_KEY, GATEWAY_TOKEN_KEY) and isinstance(v, str)]
    md.append((FORWARDED_MARK, "1"))  # the member's own certificate must grant nothing
    if not md[:-1] and s.cfg.client_tls.client_cert_auth:
        cn = (ctx.auth_context() or {}).get("x509_common_name")
        name = cn[0].decode("utf-8", "replace") if cn else ""
        if name.isascii() and name.isprintable() and name:  # a caller known by its certificate
            md.append((FORWARDED_USER, f"{_FORWARD_SECRET}:{name}"))
    CALL_METADATA.set(tuple(md))


def check_fresh(s: EtcdServer, ai: AuthInfo | None) -> None:
    """After serving a read: refuse it if the auth state changed meanwhile (etcd's doSerialize)."""
    if ai is not None and ai.revision != 0 and ai.revision != s.auth.revision:
        raise errors.ErrAuthOldRevision()
