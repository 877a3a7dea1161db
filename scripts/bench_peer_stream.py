#!/usr/bin/env python
"""The floor of the peer transport: CPU per replication round trip over grpc.aio streams,
and over plain asyncio TCP with length-prefixed frames, between two processes.

The pattern is raft's: process A writes an append (a MessageBatch of one MsgApp with E
entries of 256 B) on its client stream to B's ``RaftTransport.Send``; B decodes it and
writes one MsgAppResp on its own client stream to A; A waits for the ack before the next
append (W appends in flight). No raft, no disk: what is left is the stream machinery
and protobuf. Prints CPU µs per round trip in each process.

    python scripts/bench_peer_stream.py --rounds 5000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from datastore.api.raftpb import raft_pb2 as pb
from datastore.api.raftpb import raft_pb2_grpc
from datastore.testing.procs import free_port


def _app(i: int, entries: int) -> bytes:
    m = pb.Message(type=3, to=2, term=1, index=i, commit=i)
    for k in range(entries):
        m.entries.add(term=1, index=i + k + 1, data=b"v" * 256)
    return pb.MessageBatch(cluster_id=1, messages=[m]).SerializeToString()


_ACK = pb.MessageBatch(cluster_id=1, messages=[pb.Message(type=4, to=1, term=1, index=7)])


async def _grpc_side(role: str, my_port: int, peer_port: int, n: int, entries: int,
                     window: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    inbox: asyncio.Queue[pb.MessageBatch] = asyncio.Queue()

    class Svc(raft_pb2_grpc.RaftTransportServicer):
        async def Send(self, requests: AsyncIterator[pb.MessageBatch],
                       ctx: grpc.aio.ServicerContext) -> pb.SendAck:
            async for b in requests:
                inbox.put_nowait(b)
            return pb.SendAck()

    srv = grpc.aio.server()
    raft_pb2_grpc.add_RaftTransportServicer_to_server(Svc(), srv)
    srv.add_insecure_port(f"127.0.0.1:{my_port}")
    await srv.start()
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{peer_port}")
    await ch.channel_ready()
    call = raft_pb2_grpc.RaftTransportStub(ch).Send()
    await call.write(pb.MessageBatch(cluster_id=1))
    await asyncio.sleep(0.5)  # both streams open (start-up, not synchronisation of the run)
    apps = [pb.MessageBatch.FromString(_app(i, entries)) for i in range(16)]
    c0 = time.process_time()
    t0 = time.monotonic()
    if role == "leader":
        for i in range(min(window, n)):
            await call.write(apps[i % 16])
        sent = min(window, n)
        got = 0
        while got < n:
            b = await inbox.get()
            if b.messages:
                got += 1
                if sent < n:
                    await call.write(apps[sent % 16])
                    sent += 1
    else:
        got = 0
        while got < n:
            b = await inbox.get()
            if b.messages:
                got += 1
                _ = [(e.term, e.index, e.data) for e in b.messages[0].entries]
                await call.write(_ACK)
    out.put((role, (time.process_time() - c0) / n * 1e6, n / (time.monotonic() - t0)))
    await asyncio.sleep(0.5)  # let the peer read its last ack before the streams close
    call.cancel()
    await ch.close()
    await srv.stop(0)


async def _tcp_side(role: str, my_port: int, peer_port: int, n: int, entries: int,
                    window: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    inbox: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await r.readexactly(4)
                inbox.put_nowait(await r.readexactly(int.from_bytes(head, "big")))
            except (asyncio.IncompleteReadError, asyncio.CancelledError):
                return

    srv = await asyncio.start_server(on_conn, "127.0.0.1", my_port)
    for _ in range(100):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", peer_port)
            break
        except OSError:
            await asyncio.sleep(0.05)  # the peer's listener is starting
    await asyncio.sleep(0.5)
    apps = [_app(i, entries) for i in range(16)]
    ack = _ACK.SerializeToString()

    def frame(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    c0 = time.process_time()
    t0 = time.monotonic()
    if role == "leader":
        for i in range(min(window, n)):
            w.write(frame(apps[i % 16]))
        sent, got = min(window, n), 0
        while got < n:
            pb.MessageBatch.FromString(await inbox.get())
            got += 1
            if sent < n:
                w.write(frame(apps[sent % 16]))
                sent += 1
    else:
        got = 0
        while got < n:
            b = pb.MessageBatch.FromString(await inbox.get())
            got += 1
            _ = [(e.term, e.index, e.data) for e in b.messages[0].entries]
            w.write(frame(ack))
    out.put((role, (time.process_time() - c0) / n * 1e6, n / (time.monotonic() - t0)))
    await asyncio.sleep(0.5)
    w.close()
    srv.close()


def _proc(kind: str, *args: object) -> None:
    side = _grpc_side if kind == "grpc" else _tcp_side
    asyncio.run(side(*args))  # type: ignore[arg-type]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5000)
    ap.add_argument("--entries", type=int, default=10)
    ap.add_argument("--window", type=int, default=1)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    for kind in ("grpc", "tcp"):
        pa, pf = free_port(), free_port()
        q = ctx.Queue()
        procs = [ctx.Process(target=_proc, args=(kind, role, me, peer, a.rounds, a.entries,
                                                 a.window, q))
                 for role, me, peer in (("leader", pa, pf), ("follower", pf, pa))]
        for p in procs:
            p.start()
        res = dict((r, (cpu, rate)) for r, cpu, rate in (q.get(timeout=600) for _ in procs))
        for p in procs:
            p.join(30)
        print(f"{kind:5s}: leader {res['leader'][0]:6.1f} µs CPU per round trip, follower "
              f"{res['follower'][0]:6.1f} µs, {res['leader'][1]:,.0f} round trips/s "
              f"({a.entries} entries per append, {a.window} in flight, pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
