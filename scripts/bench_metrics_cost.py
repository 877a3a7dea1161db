#!/usr/bin/env python
"""The CPU metrics add to a put, measured directly (steadier than throughput on a shared
machine): the gRPC wrapper's time per unary call, and the time one scrape of a member's
registry takes on its event loop; together with the server CPU a put costs (from
``bench_metrics.py`` or ``bench_compare.py``) they give the overhead at a scrape rate.

    python scripts/bench_metrics_cost.py --cpu-us-per-put 350 --puts-per-s 2000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from datastore.api.decodeguard import guarded
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.grpcmetrics import GrpcMetrics
from datastore.metrics.registry import Exposition, member_registry


class _Ctx:
    def code(self) -> None:
        return None


def _drive(h: grpc.RpcMethodHandler, raw: bytes, ctx: Any, n: int) -> float:
    """CPU seconds per call of a handler whose inner coroutine finishes at once."""
    call = h.unary_unary
    t0 = time.process_time()
    for _ in range(n):
        coro = call(raw, ctx)
        try:
            coro.send(None)
        except StopIteration:
            pass
    return (time.process_time() - t0) / n


def wrapper_cost(n: int, rounds: int) -> dict[str, float]:
    resp = rpc.PutResponse()

    async def put(req: rpc.PutRequest, ctx: Any) -> rpc.PutResponse:
        return resp
    plain = grpc.unary_unary_rpc_method_handler(put, request_deserializer=rpc.PutRequest.FromString,
                                                response_serializer=rpc.PutResponse.SerializeToString)
    base = guarded(plain, "/etcdserverpb.KV/Put")
    arms = {"guard only": base,
            "basic": GrpcMetrics(False).instrument("/etcdserverpb.KV/Put", base),
            "extensive": GrpcMetrics(True).instrument("/etcdserverpb.KV/Put", base)}
    raw = rpc.PutRequest(key=b"k" * 32, value=b"v" * 256).SerializeToString()
    got: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(rounds):
        for name, h in arms.items():
            got[name].append(_drive(h, raw, _Ctx(), n))
    return {k: statistics.median(v) * 1e6 for k, v in got.items()}


async def scrape_cost(extensive: bool, n: int) -> float:
    from datastore.api.grpcserver import build_grpc_server
    from datastore.server.config import Config
    from datastore.server.etcdserver import EtcdServer

    with tempfile.TemporaryDirectory() as d:
        cfg = Config(data_dir=d, metrics="extensive" if extensive else "basic",
                     listen_client_urls=("http://127.0.0.1:0",))
        server = EtcdServer(cfg)
        build_grpc_server(server)
        exp = Exposition(member_registry(server))
        exp.render()  # the first renders every series' name once
        t0 = time.process_time()
        for _ in range(n):
            exp.render()
        took = (time.process_time() - t0) / n
        server.wal.close()
        server.backend.close()
    return took * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--scrapes", type=int, default=200)
    p.add_argument("--cpu-us-per-put", type=float, default=350.0,
                   help="the member's server CPU per put without metrics (from a bench run)")
    p.add_argument("--puts-per-s", type=float, default=2000.0)
    p.add_argument("--scrape-interval", type=float, default=1.0)
    a = p.parse_args()
    w = wrapper_cost(a.calls, a.rounds)
    print("| arm | wrapper µs/call (added) | scrape ms | added CPU per put at "
          f"{a.puts_per_s:,.0f} puts/s, 1 scrape/{a.scrape_interval:g}s | vs {a.cpu_us_per_put:.0f} µs/put |")
    print("|---|---|---|---|---|")
    for arm in ("basic", "extensive"):
        added = w[arm] - w["guard only"]
        ms = asyncio.run(scrape_cost(arm == "extensive", a.scrapes))
        per_put = added + ms * 1e3 / a.scrape_interval / a.puts_per_s
        print(f"| {arm} | {added:.2f} | {ms:.2f} | {per_put:.2f} µs | "
              f"{per_put / a.cpu_us_per_put:+.2%} |")


if __name__ == "__main__":
    main()
