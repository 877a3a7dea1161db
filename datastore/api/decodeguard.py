"""Undecodable requests get etcd's answer, not a traceback.

grpcio decodes a request before any servicer code runs; a payload that is not the
method's protobuf raises inside grpcio, which answers ``UNKNOWN`` and logs a full
traceback at error level for every such request (a cheap way to fill a disk). grpc-go,
and so etcd, answers ``INTERNAL`` with ``grpc: error unmarshalling request: ...`` for a
unary request and ``grpc: failed to unmarshal the received message ...`` for a message
on a client stream. This interceptor takes decoding over from grpcio (the handler gets
raw bytes) to answer the same way, and logs at most one warning per
``WARN_INTERVAL_S`` with the number of requests refused since the last one. A unary
method left to its generated default (``NotImplementedError``) answers UNIMPLEMENTED
without a traceback too.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

log = logging.getLogger("datastore.api")

WARN_INTERVAL_S = 10.0
UNARY_PREFIX = "grpc: error unmarshalling request: "
STREAM_PREFIX = "grpc: failed to unmarshal the received message "  # etcd 3.4's grpc-go text


class _RateLimitedWarning:
    def __init__(self) -> None:
        self.last = -WARN_INTERVAL_S
        self.suppressed = 0

    def __call__(self, method: str, error: str) -> None:
        now = time.monotonic()
        if now - self.last < WARN_INTERVAL_S:
            self.suppressed += 1
            return
        log.warning("refused an undecodable request", extra={
            "method": method, "error": error[:200], "refused_since_last_warning": self.suppressed})
        self.last, self.suppressed = now, 0


warn = _RateLimitedWarning()


def _reason(e: Exception) -> str:
    return str(e) or type(e).__name__


async def _refuse(ctx: grpc.aio.ServicerContext, method: str, message: str) -> NoReturn:
    warn(method, message)
    await ctx.abort(grpc.StatusCode.INTERNAL, message)
    raise AssertionError("unreachable")  # ctx.abort always raises


class DecodeGuard(grpc.aio.ServerInterceptor):
    """The guard as an interceptor, for servers that route through interceptors anyway
    (the gRPC proxy). The member's own server wraps its handlers once (api/dispatch.py)."""

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return guarded(await continuation(details), details.method)


def guarded(h: grpc.RpcMethodHandler | None, method: str) -> grpc.RpcMethodHandler | None:
    """``h`` taking raw bytes and decoding them itself, refusing garbage as etcd does."""
    if h is None or h.request_deserializer is None:
        return h
    decode = h.request_deserializer
    ser = h.response_serializer

    async def many(raws: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for raw in raws:
            try:
                msg = decode(raw)
            except Exception as e:  # any decoder failure is the client's malformed payload
                await _refuse(ctx, method, STREAM_PREFIX + _reason(e))
            yield msg

    if h.unary_unary is not None:
        uu = h.unary_unary

        # The hot path: decoding inline (no coroutine of its own) keeps a unary call to
        # one extra frame.
        async def unary_unary(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
            try:
                request = decode(raw)
            except Exception as e:  # as above
                await _refuse(ctx, method, UNARY_PREFIX + _reason(e))
            try:
                return await uu(request, ctx)
            except NotImplementedError:  # a generated stub's default: no traceback either
                await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=ser)
    if h.unary_stream is not None:
        us = h.unary_stream

        async def unary_stream(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                request = decode(raw)
            except Exception as e:  # as above
                await _refuse(ctx, method, UNARY_PREFIX + _reason(e))
            result = us(request, ctx)
            if inspect.isasyncgen(result):
                async for r in result:
                    yield r
            else:  # a coroutine writing with ctx.write
                await result
        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=ser)
    if h.stream_unary is not None:
        su = h.stream_unary

        async def stream_unary(raws: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext) -> Any:
            return await su(many(raws, ctx), ctx)
        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=ser)
    ss = h.stream_stream

    async def stream_stream(raws: AsyncIterator[bytes],
                            ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        result = ss(many(raws, ctx), ctx)
        if inspect.isasyncgen(result):
            async for r in result:
                yield r
        else:
            await result
    return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=ser)
