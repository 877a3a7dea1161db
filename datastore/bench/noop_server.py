"""A do-nothing etcd KV server: the ceiling a Python gRPC servicer can reach on this machine.

``bench_compare.py --target etcd,datastore,noop`` runs the same load against it as a third
column, so datastore's rate can be read as a fraction of what ``grpc.aio`` alone allows
(issue 10's target: put, Range and Txn at >= 80% of this servicer's rate).

Two modes, both answering KV.Put/Range/Txn and Maintenance.Status (which readiness checks
call) with empty but valid responses that carry a ResponseHeader; nothing is stored:

- ``servicer``: a plain ``grpc.aio`` servicer from the generated code, as datastore's
  own: requests are parsed into messages and each reply is a new message object.
- ``raw``: one generic handler with identity (de)serializers: request bytes are not
  parsed and every reply is the same pre-serialized bytes (the cheapest gRPC-in-Python).

    python -m datastore.bench.noop_server --listen 127.0.0.1:23790 [--mode raw]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import grpc

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.testing.procs import ServerProc, free_port

MODES = ("servicer", "raw")
# the same limits as datastore's client server (api/grpcserver.py), minus the interceptors
OPTIONS = [
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_concurrent_streams", 2**31 - 1),
    ("grpc.so_reuseport", 0),
]
HEADER = rpc_pb2.ResponseHeader(cluster_id=1, member_id=1, revision=1, raft_term=1)


def _txn_response() -> rpc_pb2.TxnResponse:
    # the compare "succeeded" and its one put "happened": the bench's CAS loop goes on
    return rpc_pb2.TxnResponse(header=HEADER, succeeded=True, responses=[
        rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse(header=HEADER))])


class NoopKV(rpc_pb2_grpc.KVServicer):
    async def Put(self, request: rpc_pb2.PutRequest, context: Any) -> rpc_pb2.PutResponse:
        return rpc_pb2.PutResponse(header=HEADER)

    async def Range(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        return rpc_pb2.RangeResponse(header=HEADER)

    async def Txn(self, request: rpc_pb2.TxnRequest, context: Any) -> rpc_pb2.TxnResponse:
        return _txn_response()


class NoopMaintenance(rpc_pb2_grpc.MaintenanceServicer):
    async def Status(self, request: rpc_pb2.StatusRequest, context: Any) -> rpc_pb2.StatusResponse:
        return rpc_pb2.StatusResponse(header=HEADER, version="3.5.0-noop", leader=1)


def _raw_handler() -> grpc.GenericRpcHandler:
    """Every method answers with fixed bytes; requests stay unparsed bytes."""
    replies = {
        "/etcdserverpb.KV/Put": rpc_pb2.PutResponse(header=HEADER),
        "/etcdserverpb.KV/Range": rpc_pb2.RangeResponse(header=HEADER),
        "/etcdserverpb.KV/Txn": _txn_response(),
        "/etcdserverpb.Maintenance/Status": rpc_pb2.StatusResponse(
            header=HEADER, version="3.5.0-noop", leader=1),
    }

    def handler(data: bytes) -> Any:
        async def reply(request: bytes, context: Any) -> bytes:
            return data
        return grpc.unary_unary_rpc_method_handler(reply)  # no (de)serializers: bytes

    class Raw(grpc.GenericRpcHandler):
        def __init__(self) -> None:
            self._h = {m: handler(r.SerializeToString()) for m, r in replies.items()}

        def service(self, details: grpc.HandlerCallDetails) -> Any:
            return self._h.get(details.method)

    return Raw()


def build_server(listen: str, mode: str = "servicer") -> grpc.aio.Server:
    srv = grpc.aio.server(options=OPTIONS)
    if mode == "raw":
        srv.add_generic_rpc_handlers((_raw_handler(),))
    else:
        rpc_pb2_grpc.add_KVServicer_to_server(NoopKV(), srv)
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(NoopMaintenance(), srv)
    srv.add_insecure_port(listen)
    return srv


async def serve(listen: str, mode: str) -> None:
    srv = build_server(listen, mode)
    await srv.start()
    print(f'{{"msg": "noop server serving", "listen": "{listen}", "mode": "{mode}"}}',
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await srv.stop(0)


def noop_proc(base: Path, name: str = "noop0", extra: list[str] | None = None,
              client_port: int | None = None, peer_port: int | None = None,
              initial_cluster: str | None = None, mode: str = "servicer") -> ServerProc:
    """A noop server process (not started yet), with ``datastore_proc``'s signature.

    ``peer_port`` and ``initial_cluster`` are ignored: there is no cluster to form.
    """
    cp = client_port or free_port()
    argv = [sys.executable, "-m", "datastore.bench.noop_server",
            "--listen", f"127.0.0.1:{cp}", "--mode", mode, *(extra or [])]
    return ServerProc(f"noop-{mode}" if mode != "servicer" else "noop", name, base / name,
                      cp, peer_port or 0, argv, base / f"{name}.log")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="HOST:PORT to serve on")
    p.add_argument("--mode", choices=MODES, default="servicer")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
