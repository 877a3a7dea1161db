"""One process's share of the load (``Worker``): channels, counters, the measured phase
and pre-population. The workloads themselves are in ``unary.py`` and ``watch.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import grpc

from datastore.bench.config import BenchConfig
from datastore.bench.stats import Stats
from datastore.bench.unary import UnaryLoadMixin
from datastore.bench.watch import WatchLoadMixin
from datastore.bench.wire import PUT, KeyGen


def _channel(endpoint: str) -> grpc.aio.Channel:
    # A local subchannel pool gives every channel its own TCP connection; otherwise channels
    # to the same target share one connection and "--conns" would mean nothing.
    return grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _share(n: int, parts: int, i: int) -> int:
    """Part i of n split as evenly as possible into parts."""
    return n // parts + (1 if i < n % parts else 0)


class Worker(UnaryLoadMixin, WatchLoadMixin):
    """One process's share of the load: its clients, channels and counters."""

    def __init__(self, cfg: BenchConfig, index: int = 0) -> None:
        self.cfg = cfg
        self.index = index
        p = max(1, cfg.procs)
        self.clients = _share(cfg.clients, p, index)
        self.nconns = max(1, _share(cfg.effective_conns(), p, index))
        self.total = _share(cfg.total, p, index) if cfg.total is not None else None
        self.watchers = _share(cfg.watchers, p, index)
        seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.rng = random.Random(seed * 1000003 + index)
        prefix = cfg.prefix.encode()
        if cfg.workload == "watch":
            prefix += b"w/"
        self.keys = KeyGen(prefix, cfg.key_size, cfg.key_space, cfg.val_size, self.rng)
        self.stats = Stats()
        self.channels: list[grpc.aio.Channel] = []
        self.revs: dict[int, int] = {}  # txn: last known mod_revision per key index

    async def connect(self) -> None:
        eps = self.cfg.endpoints
        self.channels = [_channel(eps[(self.index + j) % len(eps)]) for j in range(self.nconns)]
        wait = max(self.cfg.timeout, 5.0)
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in self.channels)),
                                   timeout=wait)
        except TimeoutError:
            await self.close()
            raise ConnectionError(f"cannot connect to {', '.join(eps)} within {wait:g}s") from None

    async def close(self) -> None:
        for c in self.channels:
            await c.close()

    def _calls(self, method: str, decode: Callable[[bytes], Any] | None = None) -> list[Any]:
        return [c.unary_unary(method, response_deserializer=decode) for c in self.channels]

    # -- driver --------------------------------------------------------------------------

    async def run(self, start_at: float, publish: Callable[[Stats], None] | None = None,
                  streams: list[Any] | None = None) -> dict[str, Any]:
        """Run the measured phase (after an optional warm-up) starting at monotonic start_at."""
        cfg = self.cfg
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        pub_task = None
        if publish is not None:
            async def pub() -> None:
                while True:
                    publish(self.stats)
                    await asyncio.sleep(0.1)
            pub_task = asyncio.create_task(pub())
        try:
            if cfg.workload == "watch":
                return await self._run_watch_phase(streams or [])
            if cfg.warmup > 0:
                await self.run_unary(time.monotonic() + cfg.warmup, None)
                self.stats = Stats()
            t0, c0 = time.monotonic(), _cpu_seconds()
            deadline = t0 + cfg.duration if cfg.total is None and cfg.duration else None
            await self.run_unary(deadline, self.total)
            t1, c1 = time.monotonic(), _cpu_seconds()
            return self._result(t0, t1, c1 - c0)
        finally:
            if pub_task is not None:
                pub_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pub_task
                if publish is not None:
                    publish(self.stats)

    async def _run_watch_phase(self, streams: list[Any]) -> dict[str, Any]:
        cfg = self.cfg
        t0, c0 = time.monotonic(), _cpu_seconds()
        deadline = t0 + cfg.duration if cfg.total is None and cfg.duration else None
        await self.run_watch(streams, t0, deadline, self.total if self.index == 0 else None)
        t1, c1 = time.monotonic(), _cpu_seconds()
        return self._result(t0, t1, c1 - c0)

    def _result(self, t0: float, t1: float, cpu: float) -> dict[str, Any]:
        st = self.stats
        return {
            "index": self.index, "t_start": t0, "t_end": t1, "cpu_s": cpu,
            "ops": st.ops, "errors": st.errors, "error_codes": dict(st.error_codes),
            "hist": st.hist.to_dict(), "extra": dict(st.extra),
        }


async def prepopulate(cfg: BenchConfig) -> int:
    """Put every key of the key space once (for the read workloads). Returns keys written."""
    w = Worker(BenchConfig(**{**asdict(cfg), "procs": 1, "workload": "put"}), 0)
    await w.connect()
    try:
        calls = w._calls(PUT)
        it = iter(range(w.keys.key_space))
        kg = w.keys

        async def filler(call: Any) -> None:
            for i in it:
                for attempt in range(5):
                    try:
                        await call(kg.put_req(i), timeout=cfg.timeout)
                        break
                    except grpc.aio.AioRpcError:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.1 * (attempt + 1))

        n = max(1, min(cfg.clients, 64))
        await asyncio.gather(*(filler(calls[j % len(calls)]) for j in range(n)))
        return kg.key_space
    finally:
        await w.close()
