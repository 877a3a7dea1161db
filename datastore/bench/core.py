"""The load generator: closed-loop workloads over grpc.aio, optionally in several processes.

Only the public etcd v3 API is used (KV.Put/Range/Txn, Watch.Watch), so the same run can be
pointed at real etcd or at datastore.

Cost model (measured on a 2-core box against etcd 3.4): grpc.aio with many tasks over a few
channels costs ~60-85 us of client CPU per unary RPC, the sync API with futures ~80-100 us and
blocking calls from threads ~130-180 us, so aio is used. Requests for put/get are encoded by
hand into bytes and responses are not decoded (raw bytes in and out of gRPC), which keeps the
per-request Python work to a few microseconds on top of gRPC's own cost. ``procs > 1`` runs the
clients in several processes (spawned, each with its own event loop and channels) so the
generator is not limited to one core; their histograms are merged at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import resource
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from datastore.api.etcdserverpb import rpc_pb2
from datastore.bench.hist import Histogram

WORKLOADS = ("put", "get", "get-serializable", "txn", "watch")

_PUT = "/etcdserverpb.KV/Put"
_RANGE = "/etcdserverpb.KV/Range"
_TXN = "/etcdserverpb.KV/Txn"
_WATCH = "/etcdserverpb.Watch/Watch"


@dataclass
class BenchConfig:
    endpoints: list[str]
    workload: str = "put"
    clients: int = 16
    conns: int = 0  # 0: automatic
    procs: int = 1
    duration: float | None = 10.0
    total: int | None = None
    key_size: int = 32
    val_size: int = 256
    key_space: int = 10000
    prefix: str = "bench/"
    warmup: float = 0.0
    prepopulate: bool = True
    watchers: int = 16
    rate: float = 100.0  # watch: writer puts per second
    timeout: float = 10.0  # per RPC
    seed: int | None = None
    progress: str = "auto"  # auto | tty | lines | none
    progress_interval: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)

    def effective_conns(self) -> int:
        if self.conns > 0:
            return self.conns
        return max(min(self.clients, 8), len(self.endpoints), self.procs)


# ---------------------------------------------------------------------------- encoding


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(fieldno: int, data: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(fieldno << 3 | 2) + _varint(len(data)) + data


class KeyGen:
    """Fixed-size keys ``prefix + zero-padded index`` over a key space, plus request encoders."""

    def __init__(self, prefix: bytes, key_size: int, key_space: int, val_size: int,
                 rng: random.Random) -> None:
        digits = max(len(str(max(key_space - 1, 0))), key_size - len(prefix), 1)
        self.prefix = prefix
        self.digits = digits
        self.key_space = max(1, key_space)
        self.key_len = len(prefix) + digits
        self.rng = rng
        self.value = bytes(rng.getrandbits(8) for _ in range(val_size)) if val_size else b""
        self._key_head = _varint(1 << 3 | 2) + _varint(self.key_len)  # field 1 (key)
        self._put_tail = _ld(2, self.value) if self.value else b""

    def key(self, i: int) -> bytes:
        return self.prefix + b"%0*d" % (self.digits, i)

    def random_index(self) -> int:
        return self.rng.randrange(self.key_space)

    def put_req(self, i: int) -> bytes:
        return self._key_head + self.key(i) + self._put_tail

    def range_req(self, i: int, serializable: bool) -> bytes:
        # field 7 (serializable), varint true
        return self._key_head + self.key(i) + (b"\x38\x01" if serializable else b"")


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for 'every key with this prefix'."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


def normalize_endpoint(ep: str) -> str:
    ep = ep.strip()
    for scheme in ("http://", "https://"):
        if ep.startswith(scheme):
            ep = ep[len(scheme):]
    return ep.rstrip("/")


def _channel(endpoint: str) -> grpc.aio.Channel:
    # A local subchannel pool gives every channel its own TCP connection; otherwise channels
    # to the same target share one connection and "--conns" would mean nothing.
    return grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------- worker


class _Stats:
    """Per-process counters; the progress reporter reads ops/errors."""

    def __init__(self) -> None:
        self.hist = Histogram()
        self.ops = 0
        self.errors = 0
        self.error_codes: dict[str, int] = {}
        self.remaining = 0
        self.stop = False
        self.extra: dict[str, Any] = {}

    def error(self, e: BaseException) -> None:
        self.errors += 1
        name = e.code().name if isinstance(e, grpc.aio.AioRpcError) else type(e).__name__
        self.error_codes[name] = self.error_codes.get(name, 0) + 1


def _share(n: int, parts: int, i: int) -> int:
    """Part i of n split as evenly as possible into parts."""
    return n // parts + (1 if i < n % parts else 0)


class Worker:
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
        self.stats = _Stats()
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

    # -- closed-loop unary workloads -------------------------------------------------------

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
        call = self.channels[0].unary_unary(_RANGE, response_deserializer=rpc_pb2.RangeResponse.FromString)
        req = rpc_pb2.RangeRequest(key=kg.prefix, range_end=prefix_end(kg.prefix), keys_only=True)
        resp = await call(req.SerializeToString(), timeout=max(self.cfg.timeout, 30.0))
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
            calls, loop = self._calls(_PUT), self._loop_put
        elif wl in ("get", "get-serializable"):
            calls, loop = self._calls(_RANGE), self._loop_get
        elif wl == "txn":
            calls, loop = self._calls(_TXN, rpc_pb2.TxnResponse.FromString), self._loop_txn
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

    # -- watch ------------------------------------------------------------------------------

    async def open_watchers(self) -> list[Any]:
        """Open this process's watch streams (one watch on the key prefix each)."""
        kg = self.keys
        create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=kg.prefix, range_end=prefix_end(kg.prefix)))
        streams = []
        for j in range(self.watchers):
            ch = self.channels[j % len(self.channels)]
            call = ch.stream_stream(_WATCH, request_serializer=rpc_pb2.WatchRequest.SerializeToString,
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
        calls = self._calls(_PUT)
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
                req = head + req_key + _ld(2, v)
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

    # -- driver --------------------------------------------------------------------------

    async def run(self, start_at: float, publish: Callable[[_Stats], None] | None = None,
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
                self.stats = _Stats()
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


# ---------------------------------------------------------------------------- pre-population


async def prepopulate(cfg: BenchConfig) -> int:
    """Put every key of the key space once (for the read workloads). Returns keys written."""
    w = Worker(BenchConfig(**{**asdict(cfg), "procs": 1, "workload": "put"}), 0)
    await w.connect()
    try:
        calls = w._calls(_PUT)
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


# ---------------------------------------------------------------------------- orchestration


class _Progress:
    """A progress bar on a tty, periodic one-line progress otherwise, or nothing."""

    def __init__(self, cfg: BenchConfig, stream: Any = None) -> None:
        self.cfg = cfg
        self.out = stream if stream is not None else sys.stderr
        mode = cfg.progress
        if mode == "auto":
            mode = "tty" if getattr(self.out, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self.t0 = time.monotonic()
        self.last_line = self.t0
        self.last_ops = 0
        self.drawn = False

    @property
    def interval(self) -> float:
        return 0.25 if self.mode == "tty" else min(1.0, self.cfg.progress_interval)

    def update(self, ops: int, errors: int) -> None:
        if self.mode in ("none", "off"):
            return
        now = time.monotonic()
        el = now - self.t0
        cfg = self.cfg
        if cfg.total is not None:
            frac = ops / cfg.total if cfg.total else 1.0
            if cfg.workload == "watch":
                frac = min(1.0, el / max(cfg.total / max(cfg.rate, 1e-9), 1e-9))
        else:
            span = (cfg.duration or 0.0) + (cfg.warmup if cfg.workload != "watch" else 0.0)
            frac = el / span if span else 0.0
        frac = max(0.0, min(1.0, frac))
        rate = ops / el if el > 0 else 0.0
        if self.mode == "tty":
            width = 30
            fill = int(frac * width)
            bar = "#" * fill + "-" * (width - fill)
            self.out.write(f"\r{cfg.workload} [{bar}] {frac * 100:5.1f}% {ops} ops "
                           f"{rate:,.0f}/s err {errors} {el:5.1f}s ")
            self.out.flush()
            self.drawn = True
        elif now - self.last_line >= cfg.progress_interval:
            recent = (ops - self.last_ops) / (now - self.last_line)
            self.out.write(f"[bench {cfg.workload}] {el:.1f}s {frac * 100:.0f}% ops={ops} "
                           f"avg={rate:.0f}/s last={recent:.0f}/s errors={errors}\n")
            self.out.flush()
            self.last_line, self.last_ops = now, ops

    def done(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


def merge_results(cfg: BenchConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-process results into the summary dict (what --json prints)."""
    hist = Histogram()
    ops = errors = 0
    codes: dict[str, int] = {}
    extra: dict[str, Any] = {}
    cpu = 0.0
    for r in results:
        hist.merge(Histogram.from_dict(r["hist"]))
        ops += r["ops"]
        errors += r["errors"]
        cpu += r["cpu_s"]
        for k, v in r["error_codes"].items():
            codes[k] = codes.get(k, 0) + v
        for k, v in r["extra"].items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "write_rate_target":
                extra[k] = extra.get(k, 0) + v
            else:
                extra.setdefault(k, v)
    t0 = min(r["t_start"] for r in results)
    t1 = max(r["t_end"] for r in results)
    elapsed = max(t1 - t0, 1e-9)
    summary: dict[str, Any] = {
        "workload": cfg.workload,
        "endpoints": cfg.endpoints,
        "clients": cfg.clients,
        "conns": cfg.effective_conns(),
        "procs": cfg.procs,
        "key_size": cfg.key_size,
        "val_size": cfg.val_size,
        "key_space": cfg.key_space,
        "elapsed_s": round(elapsed, 4),
        "ops": ops,
        "errors": errors,
        "error_codes": codes,
        "ops_per_s": round(ops / elapsed, 2),
        "latency_ms": hist.summary_ms(),
        "client_cpu_s": round(cpu, 3),
        "client_cpu_pct": round(cpu / elapsed * 100, 1),
        # Some load process used >85 % of a core: the generator may be the bottleneck.
        "client_saturated": any(r["cpu_s"] / max(r["t_end"] - r["t_start"], 1e-9) > 0.85
                                for r in results),
    }
    if cfg.workload == "txn":
        summary["txn"] = {"succeeded": extra.get("succeeded", 0),
                          "conflicts": extra.get("conflicts", 0)}
    if cfg.workload == "watch":
        writes = int(extra.get("writes", 0))
        watchers = int(extra.get("watchers", 0))
        wel = max(float(extra.get("write_elapsed_s", elapsed)), 1e-9)
        expected = writes * watchers
        summary["watch"] = {
            "watchers": watchers,
            "writes": writes,
            "write_errors": int(extra.get("write_errors", 0)),
            "write_rate_target": cfg.rate,
            "writes_per_s": round(writes / wel, 2),
            "write_latency_ms": extra.get("write_latency_ms", {}),
            "events": ops,
            "events_expected": expected,
            "delivered_ratio": round(ops / expected, 6) if expected else 0.0,
            "events_per_s": round(ops / wel, 2),
        }
        summary["ops_per_s"] = summary["watch"]["events_per_s"]
    return summary


async def _run_inprocess(cfg: BenchConfig, prog: _Progress) -> list[dict[str, Any]]:
    w = Worker(cfg, 0)
    await w.connect()
    try:
        streams = await w.open_watchers() if cfg.workload == "watch" else None
        if cfg.workload == "txn":
            await w.prime_revisions()
        prog.t0 = prog.last_line = time.monotonic()

        async def progress_loop() -> None:
            while True:
                await asyncio.sleep(prog.interval)
                prog.update(w.stats.ops, w.stats.errors)

        pt = asyncio.create_task(progress_loop())
        try:
            res = await w.run(time.monotonic(), None, streams)
        finally:
            pt.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pt
        prog.update(w.stats.ops, w.stats.errors)
        return [res]
    finally:
        await w.close()


def _proc_main(cfg: BenchConfig, index: int, shared: Any, start_at: Any, go: Any,
               q: Any) -> None:
    """Entry point of a spawned load process."""

    async def main() -> None:
        w = Worker(cfg, index)
        try:
            await w.connect()
            streams = await w.open_watchers() if cfg.workload == "watch" else None
            if cfg.workload == "txn":
                await w.prime_revisions()
        except Exception as e:
            q.put(("error", index, f"{type(e).__name__}: {e}"))
            await w.close()
            return
        q.put(("ready", index, None))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, go.wait)

        def publish(st: _Stats) -> None:
            shared[2 * index] = st.ops
            shared[2 * index + 1] = st.errors

        try:
            res = await w.run(start_at.value, publish, streams)
            q.put(("result", index, res))
        except Exception as e:
            q.put(("error", index, f"{type(e).__name__}: {e}"))
        finally:
            await w.close()

    asyncio.run(main())


def _run_multiprocess(cfg: BenchConfig, prog: _Progress) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    n = cfg.procs
    shared = ctx.Array("q", 2 * n, lock=False)
    start_at = ctx.Value("d", 0.0, lock=False)
    go = ctx.Event()
    q = ctx.Queue()
    procs = [ctx.Process(target=_proc_main, args=(cfg, i, shared, start_at, go, q), daemon=True)
             for i in range(n)]
    for p in procs:
        p.start()
    try:
        ready = 0
        while ready < n:
            kind, idx, payload = q.get(timeout=60)
            if kind == "error":
                raise RuntimeError(f"load process {idx} failed: {payload}")
            ready += 1
        start_at.value = time.monotonic() + 0.05
        prog.t0 = prog.last_line = start_at.value
        go.set()
        results: list[dict[str, Any]] = []
        while len(results) < n:
            try:
                kind, idx, payload = q.get(timeout=prog.interval)
            except Exception:  # queue.Empty
                if not any(p.is_alive() for p in procs) and q.empty():
                    raise RuntimeError("load processes exited without results") from None
                prog.update(sum(shared[0::2]), sum(shared[1::2]))
                continue
            if kind == "error":
                raise RuntimeError(f"load process {idx} failed: {payload}")
            results.append(payload)
        prog.update(sum(shared[0::2]), sum(shared[1::2]))
        return results
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()


def run_bench(cfg: BenchConfig, progress_stream: Any = None,
              on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one benchmark and return the summary dict.

    on_phase, if given, is called with "load-start" after pre-population (before connecting
    the load clients) and with "load-end" when they are done; bench_compare uses it to
    measure server CPU over the load only.
    """
    cfg.endpoints = [normalize_endpoint(e) for e in cfg.endpoints if e.strip()]
    if not cfg.endpoints:
        raise ValueError("no endpoints")
    if cfg.workload not in WORKLOADS:
        raise ValueError(f"unknown workload {cfg.workload!r}")
    if cfg.total is None and not cfg.duration:
        raise ValueError("need --duration or --total")
    cfg.procs = max(1, min(cfg.procs, cfg.clients if cfg.workload != "watch" else cfg.procs))
    prog = _Progress(cfg, progress_stream)
    populated = 0
    if cfg.prepopulate and cfg.workload in ("get", "get-serializable"):
        if prog.mode not in ("none", "off"):
            print(f"[bench] writing {cfg.key_space} keys before reading them",
                  file=prog.out, flush=True)
        populated = asyncio.run(prepopulate(cfg))
    if on_phase is not None:
        on_phase("load-start")
    try:
        multi = cfg.procs > 1
        results = _run_multiprocess(cfg, prog) if multi else asyncio.run(_run_inprocess(cfg, prog))
    finally:
        prog.done()
        if on_phase is not None:
            on_phase("load-end")
    summary = merge_results(cfg, results)
    summary["prepopulated_keys"] = populated
    summary["warmup_s"] = cfg.warmup
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """A human-readable summary."""
    lat = s["latency_ms"]
    lines = [
        f"workload {s['workload']}  endpoints {','.join(s['endpoints'])}  clients {s['clients']}"
        f"  conns {s['conns']}  procs {s['procs']}",
        f"keys {s['key_space']} x {s['key_size']} B, values {s['val_size']} B"
        + (f", prepopulated {s['prepopulated_keys']}" if s.get("prepopulated_keys") else ""),
        f"elapsed {s['elapsed_s']:.2f} s  ops {s['ops']}  errors {s['errors']}"
        + (f" {s['error_codes']}" if s["errors"] else ""),
    ]
    if s["workload"] == "watch":
        w = s["watch"]
        lines += [
            f"watchers {w['watchers']}  writes {w['writes']} ({w['writes_per_s']:.1f}/s, target "
            f"{w['write_rate_target']:g}/s)  events {w['events']}/{w['events_expected']} "
            f"({w['delivered_ratio'] * 100:.2f} %)",
            f"throughput {w['events_per_s']:,.1f} events/s",
            "event delivery latency ms: "
            f"p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
            f"max {lat['max']:.3f}  mean {lat['mean']:.3f}",
        ]
        wl = w.get("write_latency_ms") or {}
        if wl:
            lines.append(f"write latency ms: p50 {wl['p50']:.3f}  p99 {wl['p99']:.3f}  "
                         f"max {wl['max']:.3f}")
    else:
        lines += [
            f"throughput {s['ops_per_s']:,.1f} ops/s",
            f"latency ms: p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
            f"max {lat['max']:.3f}  mean {lat['mean']:.3f}",
        ]
    if "txn" in s:
        t = s["txn"]
        total = t["succeeded"] + t["conflicts"]
        pct = t["conflicts"] / total * 100 if total else 0.0
        lines.append(f"txn succeeded {t['succeeded']}  conflicts {t['conflicts']} ({pct:.2f} %)")
    lines.append(f"client cpu {s['client_cpu_s']:.2f} s ({s['client_cpu_pct']:.0f} % of one core)")
    if s.get("client_saturated"):
        lines.append("warning: a load process was CPU-bound; the client may be the bottleneck "
                     "(try --procs 2 or more, if there are idle cores)")
    return "\n".join(lines)
