"""More incoming calls matched at once than grpc.aio's own accept loop allows.

grpcio's aio server accepts calls one at a time: its main loop asks gRPC core for the
next call and asks again only once that call has been handed to a task of its own, a few
event-loop turns later (a task per request, then ``asyncio.wait``). Under load those turns,
not the servicers, bound the rate: puts reached the node loop 3-9 at a time. Here a
few acceptor tasks per hot method each keep a request for a call of that method pending
in core, so a burst of calls is matched in one completion-queue batch; each acceptor
hands its call to a task and asks for the next one in the same turn.

This leans on grpcio's private aio server internals (``_request_registered_call``,
``_handle_rpc``, ``_schedule_rpc_coro``, ``_MethodResolver``). :func:`available` checks
that they have the shape this was written against (grpcio 1.85); if not, the hot methods
stay served by grpcio's own loop, as every other method is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from grpc._cython import cygrpc

log = logging.getLogger("datastore.api")

HOT_METHODS = ("/etcdserverpb.KV/Put", "/etcdserverpb.KV/Range", "/etcdserverpb.KV/Txn")
PER_METHOD = 8  # pending call requests per hot method (measured: 4 to 16 alike, far above 1)

_SHAPES: dict[str, tuple[str, ...]] = {
    "_handle_rpc": ("method_name", "method_resolver", "interceptors", "rpc_state", "loop",
                    "concurrency_exceeded"),
    "_schedule_rpc_coro": ("rpc_coro", "rpc_state", "loop", "method_name"),
}


def _args(fn: Any) -> tuple[str, ...] | None:
    code = getattr(fn, "__code__", None)
    return None if code is None else tuple(code.co_varnames[:code.co_argcount])


def available() -> bool:
    """grpcio's internals are the ones this module drives."""
    if not all(_args(getattr(cygrpc, name, None)) == shape for name, shape in _SHAPES.items()):
        return False
    return (hasattr(cygrpc, "_MethodResolver")
            and hasattr(cygrpc.AioServer, "_request_registered_call")
            and hasattr(cygrpc.AioServer, "is_running"))


def _split(method: str) -> tuple[str, str]:
    service, name = method.lstrip("/").split("/", 1)
    return service, name


class HotAcceptors:
    """Acceptor tasks for ``handlers`` (full method name -> unary handler) on ``srv``.

    Build it before ``srv.start()`` (it registers the methods with core by name: only a
    registered method can be asked for by name), then call :meth:`start` after.
    """

    def __init__(self, srv: grpc.aio.Server, handlers: Mapping[str, grpc.RpcMethodHandler],
                 per_method: int = PER_METHOD) -> None:
        self._srv = srv
        self._handlers = dict(handlers) if available() else {}
        self._per_method = per_method
        self._tasks: set[asyncio.Task[Any]] = set()  # the acceptors and the calls they started
        self.accepted = 0  # calls matched by the acceptors (the rest went to grpc's own loop)
        for method, h in self._handlers.items():
            service, name = _split(method)
            srv.add_registered_method_handlers(service, {name: h})

    @property
    def active(self) -> bool:
        return bool(self._handlers)

    @property
    def running(self) -> int:
        """Acceptors and the calls they started, not finished yet."""
        return len(self._tasks)

    def start(self) -> None:
        """Start the acceptors (on the running loop); they end when the server stops."""
        loop = asyncio.get_running_loop()
        aio = self._srv._server  # the cygrpc.AioServer behind grpc.aio.Server
        resolver = cygrpc._MethodResolver([], self._handlers)
        for method in self._handlers:
            for _ in range(self._per_method):
                self._keep(loop.create_task(self._accept(aio, method, resolver, loop)))

    def _keep(self, task: asyncio.Task[Any]) -> None:
        # the loop holds tasks weakly: without a reference a call could be collected
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, aio: Any, method: str, resolver: Any,
                      loop: asyncio.AbstractEventLoop) -> None:
        name = method.encode()
        handle_rpc, schedule = cygrpc._handle_rpc, cygrpc._schedule_rpc_coro
        while aio.is_running():
            try:
                state = await aio._request_registered_call(name)
            except Exception as e:  # shutting down: core fails every pending request
                if aio.is_running():
                    log.warning("stopped accepting calls beside grpc's own loop",
                                extra={"method": method, "error": repr(e)})
                return
            self.accepted += 1
            coro = handle_rpc(method, resolver, (), state, loop, False)
            self._keep(loop.create_task(schedule(coro, state, loop, method)))


def per_call(normal: grpc.RpcMethodHandler, learner: grpc.RpcMethodHandler,
             is_learner: Callable[[], bool]) -> grpc.RpcMethodHandler:
    """One unary handler that picks the member's role per call (a registered method gets
    no per-call handler lookup, where the role is chosen for every other method)."""
    n, lrn = normal.unary_unary, learner.unary_unary

    async def call(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
        return await (lrn if is_learner() else n)(raw, ctx)
    return normal._replace(unary_unary=call)  # type: ignore[attr-defined]
