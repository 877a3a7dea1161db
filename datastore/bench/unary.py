"""The closed-loop unary workloads (put, get, get-serializable, txn): each client is one
task that sends its next request as soon as the previous one answered.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from datastore.api.etcdserverpb import rpc_pb2
from datastore.bench.base import WorkerBase
from datastore.bench.wire import PUT, RANGE, TXN, prefix_end


class UnaryLoadMixin(WorkerBase):
    """Unary workloads of a ``Worker``; state lives in ``Worker.__init__``."""

    async def _loop_put(self, call: Any) -> None:
        st, kg, to = self.stats, self.keys, self.cfg.timeout
        rnd, pc, hist = kg.random_index, time.perf_counter, st.hist
        while not st.stop:
            st.remaining -= 1
            if st.remaining < 0:
                break
            req = kg.put_req(rnd())
            t0 = pc()
            try:
                await call(req, timeout=to)
            except Exception as e:
                st.error(e)
                await asyncio.sleep(0.01)
                continue
            hist.record(int((pc() - t0) * 1e6))
            st.ops += 1

    async def _loop_get(self, call: Any) -> None:
        st, kg, to = self.stats, self.keys, self.cfg.timeout
        ser = self.cfg.workload == "get-serializable"
        rnd, pc, hist = kg.random_index, time.perf_counter, st.hist
        while not st.stop:
            st.remaining -= 1
            if st.remaining < 0:
                break
            req = kg.range_req(rnd(), ser)
            t0 = pc()
            try:
                await call(req, timeout=to)
            except Exception as e:
                st.error(e)
                await asyncio.sleep(0.01)
                continue
            hist.record(int((pc() - t0) * 1e6))
            st.ops += 1

    async def _loop_txn(self, call: Any) -> None:
        """Compare-and-swap: if mod_revision(key) == last seen then put else range(key)."""
        st, kg, to = self.stats, self.keys, self.cfg.timeout
        rnd, pc, hist, revs = kg.random_index, time.perf_counter, st.hist, self.revs
        value = kg.value
        ex = st.extra
        ex.setdefault("succeeded", 0)
        ex.setdefault("conflicts", 0)
        Compare, RequestOp = rpc_pb2.Compare, rpc_pb2.RequestOp
        while not st.stop:
            st.remaining -= 1
            if st.remaining < 0:
                break
            i = rnd()
            key = kg.key(i)
            req = rpc_pb2.TxnRequest(
                compare=[Compare(result=Compare.EQUAL, target=Compare.MOD, key=key,
                                 mod_revision=revs.get(i, 0))],
                success=[RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
                failure=[RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
            )
            t0 = pc()
            try:
                resp = await call(req.SerializeToString(), timeout=to)
            except Exception as e:
                st.error(e)
                await asyncio.sleep(0.01)
                continue
            hist.record(int((pc() - t0) * 1e6))
            st.ops += 1
            if resp.succeeded:
                ex["succeeded"] += 1
                revs[i] = resp.header.revision
            else:
                ex["conflicts"] += 1
                kvs = resp.responses[0].response_range.kvs if resp.responses else []
                revs[i] = kvs[0].mod_revision if kvs else 0

    async def prime_revisions(self) -> int:
        """txn: learn the current mod_revision of existing keys (one keys-only range), so the
        first CAS on an existing key is not counted as a conflict."""
        kg = self.keys
        call = self.channels[0].unary_unary(RANGE, response_deserializer=rpc_pb2.RangeResponse.FromString)
        req = rpc_pb2.RangeRequest(key=kg.prefix, range_end=prefix_end(kg.prefix), keys_only=True)
        timeout = max(self.cfg.timeout, 30.0)
        try:
            resp = await call(req.SerializeToString(), timeout=timeout)
        except grpc.aio.AioRpcError:  # kine refuses keys_only: read the values too
            req.keys_only = False
            resp = await call(req.SerializeToString(), timeout=timeout)
        plen, n = len(kg.prefix), 0
        for kv in resp.kvs:
            rest = kv.key[plen:]
            if len(rest) == kg.digits and rest.isdigit():
                self.revs[int(rest)] = kv.mod_revision
                n += 1
        return n

    async def run_unary(self, deadline: float | None, count: int | None) -> None:
        st = self.stats
        st.stop = False
        st.remaining = count if count is not None else 1 << 62
        wl = self.cfg.workload
        if wl == "put":
            calls, loop = self._calls(PUT), self._loop_put
        elif wl in ("get", "get-serializable"):
            calls, loop = self._calls(RANGE), self._loop_get
        elif wl == "txn":
            calls, loop = self._calls(TXN, rpc_pb2.TxnResponse.FromString), self._loop_txn
        else:
            raise ValueError(f"not a unary workload: {wl}")
        handle = None
        if deadline is not None:
            ev_loop = asyncio.get_running_loop()
            handle = ev_loop.call_at(ev_loop.time() + max(0.0, deadline - time.monotonic()),
                                     setattr, st, "stop", True)
        try:
            await asyncio.gather(*(loop(calls[j % len(calls)]) for j in range(self.clients)))
        finally:
            if handle is not None:
                handle.cancel()
