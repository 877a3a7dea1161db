"""go-grpc-prometheus's server metrics for the member's client services, as etcd exports them.

``grpc_server_started_total``, ``grpc_server_handled_total`` (``grpc_code``),
``grpc_server_msg_received_total`` and ``grpc_server_msg_sent_total``, labelled
``grpc_type`` (unary, client_stream, server_stream, bidi_stream), ``grpc_service``
(``etcdserverpb.KV``) and ``grpc_method`` (``Put``); with ``--metrics extensive`` also
the ``grpc_server_handling_seconds`` histogram. Like etcd's ``InitializeMetrics`` every
method's series exist from the start, at zero, for every code. Plus etcd's codec
counters, ``etcd_network_client_grpc_{received,sent}_bytes_total``, and
``etcd_server_client_requests_total{type,client_api_version}`` (etcd's interceptors count
each call, ``unary`` or ``stream``, by the ``client-api-version`` metadata its clients send,
``unknown`` without it).

Each handler of the method table is wrapped once (:func:`instrumented`); a call adds to
plain ints in its method's :class:`MethodStats`, and :class:`GrpcMetrics` (a collector)
builds the families only when ``/metrics`` is scraped.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from time import perf_counter
from typing import Any

import grpc
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from datastore.metrics.hist import DEF_BUCKETS, Histogram, family

# grpc-go's codes.Code.String(), in code order (go-grpc-middleware's AllCodes)
CODE_NAMES = {
    grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown", grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded", grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition", grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange", grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal", grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss", grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def method_type(h: grpc.RpcMethodHandler) -> str:
    if h.request_streaming:
        return "bidi_stream" if h.response_streaming else "client_stream"
    return "server_stream" if h.response_streaming else "unary"


class MethodStats:
    """One method's counts; the wrappers add to them, the collector reads them."""

    __slots__ = ("codes", "hist", "method", "ok", "received", "sent", "service", "started", "type")

    def __init__(self, full_method: str, typ: str, timed: bool) -> None:
        self.service, self.method = full_method.lstrip("/").split("/", 1)
        self.type = typ
        self.started = 0
        self.ok = 0
        self.codes: dict[grpc.StatusCode, int] = {}  # the failures, by code
        self.received = 0  # stream messages (a unary call receives one per start)
        self.sent = 0
        self.hist = Histogram(DEF_BUCKETS) if timed else None

    def failed(self, e: BaseException, ctx: grpc.aio.ServicerContext) -> None:
        if isinstance(e, grpc.aio.AbortError):
            code = ctx.code() or grpc.StatusCode.UNKNOWN
        elif isinstance(e, asyncio.CancelledError | GeneratorExit):
            code = grpc.StatusCode.CANCELLED  # the client went away
        else:
            code = grpc.StatusCode.UNKNOWN  # what grpcio answers for an unhandled exception
        self.codes[code] = self.codes.get(code, 0) + 1

    def handled(self) -> int:
        return self.ok + sum(self.codes.values())


CLIENT_API_VERSION_KEY = "client-api-version"  # what etcd's clientv3 sends ("3.6")
# Client-chosen label values: past this many, new ones count as "unknown" (memory stays flat).
MAX_CLIENT_API_VERSIONS = 64


class GrpcMetrics(Collector):
    def __init__(self, extensive: bool) -> None:
        self.extensive = extensive
        self.methods: dict[str, MethodStats] = {}
        self.received_bytes = 0
        self.sent_bytes = 0
        # etcd_server_client_requests_total: (type, client_api_version) -> calls
        self.client_requests: dict[tuple[str, str], int] = {}

    def client_request(self, kind: str, metadata: Any) -> None:
        """Count one call (``kind`` "unary" or "stream") by the client's API version."""
        ver = "unknown"
        for k, v in metadata or ():
            if k == CLIENT_API_VERSION_KEY:
                ver = v if isinstance(v, str) else "unknown"
                break
        key = (kind, ver)
        counts = self.client_requests
        n = counts.get(key)
        if n is None and len(counts) >= MAX_CLIENT_API_VERSIONS:
            key = (kind, "unknown")
            n = counts.get(key)
        counts[key] = (n or 0) + 1

    def instrument(self, full_method: str, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        stats = self.methods.get(full_method)
        if stats is None:
            stats = self.methods[full_method] = MethodStats(full_method, method_type(h),
                                                            self.extensive)
        return instrumented(h, stats, self)

    def collect(self) -> Iterator[Metric]:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        started = CounterMetricFamily("grpc_server_started_total",
                                      "Total number of RPCs started on the server.", labels=labels)
        handled = CounterMetricFamily(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=[*labels, "grpc_code"])
        received = CounterMetricFamily("grpc_server_msg_received_total",
                                       "Total number of RPC stream messages received on the server.",
                                       labels=labels)
        sent = CounterMetricFamily("grpc_server_msg_sent_total",
                                   "Total number of gRPC stream messages sent by the server.",
                                   labels=labels)
        stats = sorted(self.methods.values(), key=lambda s: (s.service, s.method))
        for s in stats:
            values = [s.type, s.service, s.method]
            started.add_metric(values, s.started)
            for code, name in CODE_NAMES.items():
                handled.add_metric([*values, name], s.ok if code is grpc.StatusCode.OK
                                   else s.codes.get(code, 0))
            unary_in = s.type in ("unary", "server_stream")
            received.add_metric(values, s.started if unary_in else s.received)
            sent.add_metric(values, s.handled() if s.type == "unary" else s.sent)
        yield from (started, handled, received, sent)
        if self.extensive:
            yield family(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been "
                "application-level handled by the server.",
                labels, (([s.type, s.service, s.method], s.hist) for s in stats if s.hist))
        requests = CounterMetricFamily("etcd_server_client_requests_total",
                                       "The total number of client requests per client version.",
                                       labels=["type", "client_api_version"])
        for (kind, ver), n in sorted(self.client_requests.items()):
            requests.add_metric([kind, ver], n)
        yield requests
        yield CounterMetricFamily("etcd_network_client_grpc_received_bytes_total",
                                  "The total number of bytes received from grpc clients.",
                                  value=self.received_bytes)
        yield CounterMetricFamily("etcd_network_client_grpc_sent_bytes_total",
                                  "The total number of bytes sent to grpc clients.",
                                  value=self.sent_bytes)


def instrumented(h: grpc.RpcMethodHandler, stats: MethodStats,
                 totals: GrpcMetrics) -> grpc.RpcMethodHandler:
    """``h`` (taking raw request bytes, as the decode guard's handlers do) counted."""
    hist = stats.hist
    ser = h.response_serializer or bytes  # no serializer: the handler answers in bytes

    def serialize(resp: Any) -> bytes:
        out = ser(resp)
        stats.sent += 1
        totals.sent_bytes += len(out)
        return out

    async def counted(raws: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for raw in raws:
            stats.received += 1
            totals.received_bytes += len(raw)
            yield raw

    def done(t0: float) -> None:
        stats.ok += 1
        if hist is not None:
            hist.observe(perf_counter() - t0)

    def failed(e: BaseException, ctx: grpc.aio.ServicerContext, t0: float) -> None:
        stats.failed(e, ctx)
        if hist is not None:
            hist.observe(perf_counter() - t0)

    if h.unary_unary is not None:
        uu = h.unary_unary

        # The hot path: counting inline, one frame, no clock read unless extensive.
        async def unary_unary(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
            stats.started += 1
            totals.received_bytes += len(raw)
            t0 = perf_counter() if hist is not None else 0.0
            try:
                resp = await uu(raw, ctx)
            except BaseException as e:
                failed(e, ctx, t0)
                raise
            stats.ok += 1
            if hist is not None:
                hist.observe(perf_counter() - t0)
            return resp
        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)

    async def streamed(result: Any) -> AsyncIterator[Any]:
        if inspect.isasyncgen(result):
            async for r in result:
                yield r
        else:  # a coroutine writing with ctx.write
            await result

    if h.unary_stream is not None:
        us = h.unary_stream

        async def unary_stream(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            stats.started += 1
            totals.received_bytes += len(raw)
            t0 = perf_counter()
            try:
                async for r in streamed(us(raw, ctx)):
                    yield r
            except BaseException as e:
                failed(e, ctx, t0)
                raise
            done(t0)
        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)
    if h.stream_unary is not None:
        su = h.stream_unary

        async def stream_unary(raws: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext) -> Any:
            stats.started += 1
            t0 = perf_counter()
            try:
                resp = await su(counted(raws), ctx)
            except BaseException as e:
                failed(e, ctx, t0)
                raise
            done(t0)
            return resp
        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)
    ss = h.stream_stream

    async def stream_stream(raws: AsyncIterator[bytes],
                            ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        stats.started += 1
        t0 = perf_counter()
        try:
            async for r in streamed(ss(counted(raws), ctx)):
                yield r
        except BaseException as e:
            failed(e, ctx, t0)
            raise
        done(t0)
    return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)
