"""The watch workload: watch streams on the key prefix, fed by one writer at a fixed
rate; latency is measured from the write time carried in each value.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import grpc

from datastore.api.etcdserverpb import rpc_pb2
from datastore.bench.base import WorkerBase
from datastore.bench.hist import Histogram
from datastore.bench.wire import PUT, WATCH, ld_field, prefix_end


class WatchLoadMixin(WorkerBase):
    """The watch workload of a ``Worker``; state lives in ``Worker.__init__``."""

    async def open_watchers(self) -> list[Any]:
        """Open this process's watch streams (one watch on the key prefix each)."""
        kg = self.keys
        create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=kg.prefix, range_end=prefix_end(kg.prefix)))
        streams = []
        for j in range(self.watchers):
            ch = self.channels[j % len(self.channels)]
            call = ch.stream_stream(WATCH, request_serializer=rpc_pb2.WatchRequest.SerializeToString,
                                    response_deserializer=rpc_pb2.WatchResponse.FromString)()
            await call.write(create)
            resp = await asyncio.wait_for(call.read(), timeout=self.cfg.timeout)
            if resp is grpc.aio.EOF or not resp.created:
                raise RuntimeError(f"watch was not created: {resp}")
            streams.append(call)
        return streams

    async def _watch_reader(self, call: Any, idle_after: list[float]) -> None:
        st, hist, mono = self.stats, self.stats.hist, time.monotonic
        unpack = struct.Struct("<d").unpack_from
        while True:
            try:
                resp = await call.read()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not st.stop:
                    st.error(e)
                return
            if resp is grpc.aio.EOF:
                return
            now = mono()
            idle_after[0] = now
            for ev in resp.events:
                v = ev.kv.value
                if len(v) >= 8:
                    hist.record(int((now - unpack(v)[0]) * 1e6))
                st.ops += 1

    async def _watch_writer(self, start: float, deadline: float | None, count: int | None) -> None:
        """Puts at cfg.rate per second, on schedule, with bounded concurrency."""
        cfg, kg, st = self.cfg, self.keys, self.stats
        calls = self._calls(PUT)
        whist = Histogram()
        sem = asyncio.Semaphore(max(1, self.clients))
        pad = kg.value[8:] if len(kg.value) > 8 else b""
        head = kg._key_head
        writes = 0
        werrors = 0
        pc = time.perf_counter
        interval = 1.0 / cfg.rate if cfg.rate > 0 else 0.0
        tasks: set[asyncio.Task[None]] = set()

        async def one(req_key: bytes, call: Any) -> None:
            nonlocal werrors
            try:
                v = struct.pack("<d", time.monotonic()) + pad
                req = head + req_key + ld_field(2, v)
                t0 = pc()
                await call(req, timeout=cfg.timeout)
                whist.record(int((pc() - t0) * 1e6))
            except Exception as e:
                werrors += 1
                st.error(e)
            finally:
                sem.release()

        n = 0
        while True:
            if count is not None and n >= count:
                break
            due = start + n * interval
            if deadline is not None and due >= deadline:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            t = asyncio.create_task(one(kg.key(kg.random_index()), calls[n % len(calls)]))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            n += 1
            writes += 1
        if tasks:
            await asyncio.gather(*tasks)
        st.extra.update(writes=writes, write_errors=werrors,
                        write_elapsed_s=round(time.monotonic() - start, 4),
                        write_latency_ms=whist.summary_ms(), write_rate_target=cfg.rate)

    async def run_watch(self, streams: list[Any], start: float, deadline: float | None,
                        count: int | None) -> None:
        st = self.stats
        idle_after = [time.monotonic()]
        readers = [asyncio.create_task(self._watch_reader(c, idle_after)) for c in streams]
        if self.index == 0:
            await self._watch_writer(start, deadline, count)
        else:
            end = deadline if deadline is not None else start + (self.cfg.total or 0) / max(
                self.cfg.rate, 1e-9)
            await asyncio.sleep(max(0.0, end - time.monotonic()))
        # Drain: events still in flight after the last write; stop after 0.5 s without any.
        hard = time.monotonic() + 5.0
        while True:
            left = min(hard, idle_after[0] + 0.5) - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(left)
        st.stop = True
        for c in streams:
            c.cancel()
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        st.extra.update(watchers=len(streams))
