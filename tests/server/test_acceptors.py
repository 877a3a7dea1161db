"""The hot methods' acceptors (api/acceptors.py): grpcio's internals still have the shape
they drive, calls are served through them with the member's answers, and they end with
the server."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc

from datastore.api import acceptors
from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.testing.procs import free_port


def test_grpcio_internals_have_the_expected_shape() -> None:
    # If a grpcio upgrade changes them, the member still serves (grpcio's own loop takes
    # the hot methods too) but loses the batching: this test says so.
    assert acceptors.available()


def _member_argv(data: Path) -> list[str]:
    cp, pp = free_port(), free_port()
    return ["--name", "m0", "--data-dir", str(data),
            "--listen-client-urls", f"http://127.0.0.1:{cp}",
            "--advertise-client-urls", f"http://127.0.0.1:{cp}",
            "--listen-peer-urls", f"http://127.0.0.1:{pp}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
            "--initial-cluster", f"m0=http://127.0.0.1:{pp}"]


def test_put_range_txn_go_through_the_acceptors(tmp_path: Path) -> None:
    from datastore.member import start_member
    from datastore.server.config import add_serve_arguments, config_from_args

    async def main() -> None:
        parser = argparse.ArgumentParser()
        add_serve_arguments(parser)
        cfg = config_from_args(parser.parse_args(_member_argv(tmp_path / "m0")))
        member = await start_member(cfg)
        acc = member.acceptors
        assert acc is not None and acc.active
        try:
            async with grpc.aio.insecure_channel(cfg.listen_client_urls[0].split("//")[1]) as ch:
                kv = rpc_pb2_grpc.KVStub(ch)
                puts = await asyncio.gather(*(
                    kv.Put(rpc_pb2.PutRequest(key=b"k%d" % i, value=b"v"), timeout=30)
                    for i in range(64)))
                assert sorted(p.header.revision for p in puts) == list(range(2, 66))
                r = await kv.Range(rpc_pb2.RangeRequest(key=b"k", range_end=b"l"), timeout=30)
                assert r.count == 64 and r.header.member_id == member.server.member_id
                t = await kv.Txn(rpc_pb2.TxnRequest(
                    compare=[rpc_pb2.Compare(key=b"k1", target=rpc_pb2.Compare.VALUE,
                                             value=b"v")],
                    success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
                        key=b"k1", value=b"w"))]), timeout=30)
                assert t.succeeded and t.header.revision == 66
                # etcd's error, through the acceptors' handler, as through the method table
                try:
                    await kv.Put(rpc_pb2.PutRequest(key=b""), timeout=30)
                    raise AssertionError("an empty key was accepted")
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert e.details() == "etcdserver: key is not provided"
            # most calls land on the acceptors (grpc's own loop keeps one request per method)
            assert acc.accepted >= 40, acc.accepted
        finally:
            await member.stop()
        for _ in range(100):  # the acceptors end once core fails their pending requests
            if acc.running == 0:
                break
            await asyncio.sleep(0.05)  # poll interval of the condition above
        assert acc.running == 0

    asyncio.run(main())
