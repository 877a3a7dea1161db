"""Certificate revocation lists: etcd's ``--client-crl-file`` and ``--peer-crl-file``.

etcd's rule (``transport.checkCRL``): a connection whose presented certificates include
one whose serial number is listed in the CRL file is refused; the file is read again for
every new connection, so a replaced CRL applies without a restart; a CRL file that cannot
be read or parsed refuses every certificate. Serials only: the CRL's signature, issuer
and next-update time are not checked. etcd 3.4 reads PEM or DER CRLs, 3.6 only DER; we
read both.

Where the check happens: etcd completes the TLS handshake, checks, and closes the
connection. gRPC's Python server credentials have no CRL setting and no hook between
the handshake and the first request, so the gRPC listeners check the certificate the
handshake verified (the call's auth context) before each call is handled and refuse it;
the HTTPS listeners check it right after their handshake and close the connection.
Verdicts are cached per presented chain until the file changes.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from cryptography import x509

log = logging.getLogger("datastore.tls")

_PEM_CHAIN = "x509_pem_cert_chain"  # gRPC's auth context: what the peer presented
_PEM_LEAF = "x509_pem_cert"


def load_revoked_serials(path: str) -> frozenset[int]:
    """The serial numbers a CRL file (PEM or DER) revokes; ValueError if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"open {path}: {(e.strerror or str(e)).lower()}") from None
    try:
        crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
               else x509.load_der_x509_crl(data))
    except ValueError:
        raise ValueError(f"{path}: x509: malformed crl (neither a PEM nor a DER "
                         "certificate revocation list)") from None
    return frozenset(r.serial_number for r in crl)


class RevocationList:
    """One CRL file, re-read when its size or mtime changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._error: str | None = None
        self._verdicts: dict[bytes, str | None] = {}

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp and self._stamp is not None:
            return
        self._stamp, self._verdicts = stamp, {}
        try:
            self._serials, self._error = load_revoked_serials(self.path), None
        except ValueError as e:
            self._serials, self._error = frozenset(), str(e)
            log.warning("cannot read the certificate revocation list; refusing client "
                        "certificates until it is fixed", extra={"crl_file": self.path,
                                                                 "error": str(e)})

    def refusal(self, chain_pem: bytes) -> str | None:
        """Why a connection presenting ``chain_pem`` is refused, or None to accept it."""
        self._refresh()
        if chain_pem in self._verdicts:
            return self._verdicts[chain_pem]
        verdict = self._judge(chain_pem)
        if len(self._verdicts) > 10_000:  # bounded: distinct client certificates
            self._verdicts.clear()
        self._verdicts[chain_pem] = verdict
        if verdict is not None:
            log.warning("refused a revoked certificate", extra={"reason": verdict})
        return verdict

    def _judge(self, chain_pem: bytes) -> str | None:
        if self._error is not None:
            return f"transport: {self._error}"
        try:
            certs = x509.load_pem_x509_certificates(chain_pem)
        except ValueError:
            return "transport: cannot read the presented certificate"
        for c in certs:
            if c.serial_number in self._serials:
                return f"transport: certificate serial {c.serial_number:x} revoked"
        return None


def presented_chain(auth_context: Mapping[str, Sequence[bytes]]) -> bytes | None:
    """The PEM certificates a gRPC peer presented (None: it presented none)."""
    for key in (_PEM_CHAIN, _PEM_LEAF):
        v = auth_context.get(key)
        if v:
            return b"".join(v)
    return None


def crl_checked(h: grpc.RpcMethodHandler, crl: RevocationList) -> grpc.RpcMethodHandler:
    """``h`` refusing, before it runs, a call over a connection with a revoked certificate."""

    async def check(ctx: grpc.aio.ServicerContext) -> None:
        chain = presented_chain(ctx.auth_context() or {})
        reason = crl.refusal(chain) if chain is not None else None
        if reason is not None:
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, reason)

    def wrap(inner: Any) -> Any:
        if inspect.isasyncgenfunction(inner):
            async def stream(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
                await check(ctx)
                async for item in inner(request, ctx):
                    yield item
            return stream

        async def call(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
            await check(ctx)
            result = inner(request, ctx)
            return await result if inspect.isawaitable(result) else result
        return call

    kw = {"request_deserializer": h.request_deserializer,
          "response_serializer": h.response_serializer}
    if h.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(h.unary_unary), **kw)
    if h.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(h.unary_stream), **kw)
    if h.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(h.stream_unary), **kw)
    return grpc.stream_stream_rpc_method_handler(wrap(h.stream_stream), **kw)


class CheckedRegistrar:
    """Stands in for a gRPC server in generated ``add_XServicer_to_server`` calls, and
    registers every method on the real server behind :func:`crl_checked`."""

    def __init__(self, server: grpc.aio.Server, crl: RevocationList) -> None:
        self._server, self._crl = server, crl

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: crl_checked(h, self._crl) for name, h in handlers.items()})

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The generated code's unchecked copy of the same table: not registered."""
