"""Snapshots over the peer transport: one client stream per transfer (``SendSnapshot``).

Sender (leader): a ``MsgSnap`` from raft names a prepared checkpoint
(``snapshot_image.Checkpoints``). The transfer streams it as record chunks; reading the
disk and hashing run in a thread of the transfer's own, and gRPC flow control holds the
writer back, so the leader's memory stays at a few chunks whatever the store's size. The
outcome goes to raft with ``report_snapshot`` (failure also reports the peer
unreachable), so raft retries, like etcd's snapshot sender.

Receiver (follower): the chunks become SST files under ``<data-dir>/snap-incoming/recv-*``.
Only when the stream ended with a matching SHA-256 and length, and the files are synced,
is the directory renamed ``img-*`` and the MsgSnap stepped into raft, its data naming the
image; the install happens when raft hands the snapshot back in a Ready
(``ClusterOps.install_snapshot``). A broken stream leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc

from datastore.api.raftpb import raft_pb2 as pb
from datastore.api.raftpb import raft_pb2_grpc
from datastore.metrics.hist import Histogram, exponential_buckets
from datastore.raft.types import Message, MsgType, Snapshot
from datastore.server import codec
from datastore.server.snapshot_image import (
    IMAGE_PREFIX,
    INCOMING_DIR,
    RECV_PREFIX,
    ImageWriter,
    image_chunks,
)

if TYPE_CHECKING:
    from datastore.server.transport import PeerTransport

log = logging.getLogger("datastore.snapshot")

CHUNK_BYTES = 1 << 20
PROGRESS_INTERVAL_S = 2.0
# Test-only knobs: small chunks and a pause after each, so a test can kill a member in the
# middle of a transfer (it waits for the progress line, then kills).
CHUNK_BYTES_ENV = "DATASTORE_SNAPSHOT_CHUNK_BYTES"
CHUNK_DELAY_ENV = "DATASTORE_SNAPSHOT_CHUNK_DELAY_S"


def _chunk_bytes() -> int:
    return int(os.environ.get(CHUNK_BYTES_ENV) or CHUNK_BYTES)


def _chunk_delay() -> float:
    return float(os.environ.get(CHUNK_DELAY_ENV) or 0)


# etcd's rafthttp: 100 ms doubling, 10 buckets (up to 51.2 s)
TRANSFER_BUCKETS = exponential_buckets(0.1, 2, 10)
UNKNOWN_SENDER = "UNKNOWN_SNAPSHOT_SENDER"  # etcd's label when the sender is not known yet


class SnapshotStats:
    """Transfers by peer (hex id, etcd's ``To``/``From`` label value), for /metrics:
    outcomes counted once per transfer, durations of the successful ones, as etcd's."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.send_failures: dict[str, int] = {}
        self.send_seconds: dict[str, Histogram] = {}
        self.received: dict[str, int] = {}
        self.receive_failures: dict[str, int] = {}
        self.receive_seconds: dict[str, Histogram] = {}
        self.sending: dict[str, int] = {}  # transfers in flight now, by peer
        self.receiving: dict[str, int] = {}

    @staticmethod
    def in_flight(counts: dict[str, int], peer: str, delta: int) -> None:
        counts[peer] = counts.get(peer, 0) + delta

    @staticmethod
    def _done(ok: bool, peer: str, start: float, counts: dict[str, int],
              failures: dict[str, int], seconds: dict[str, Histogram]) -> None:
        if not ok:
            failures[peer] = failures.get(peer, 0) + 1
            return
        counts[peer] = counts.get(peer, 0) + 1
        h = seconds.get(peer)
        if h is None:
            h = seconds[peer] = Histogram(TRANSFER_BUCKETS)
        h.observe(time.monotonic() - start)

    def send_done(self, peer: str, ok: bool, start: float) -> None:
        self._done(ok, peer, start, self.sent, self.send_failures, self.send_seconds)

    def receive_done(self, peer: str, ok: bool, start: float) -> None:
        self._done(ok, peer, start, self.received, self.receive_failures, self.receive_seconds)


def _next_hashed(chunks: Iterator[bytes], h: hashlib._Hash) -> bytes | None:
    data = next(chunks, None)
    if data is not None:
        h.update(data)
    return data


class _Progress:
    """Progress lines for a long transfer: the first chunk, then every few seconds."""

    def __init__(self, what: str, **fields: object) -> None:
        self.what = what
        self.fields = fields
        self.start = time.monotonic()
        self.last = 0.0
        self.bytes = 0
        self.chunks = 0

    def add(self, n: int) -> None:
        self.bytes += n
        self.chunks += 1
        now = time.monotonic()
        if self.chunks == 1 or now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            log.info("snapshot transfer progress",
                     extra={**self.fields, "direction": self.what, "bytes": self.bytes,
                            "chunks": self.chunks})

    def done(self, msg: str) -> None:
        secs = time.monotonic() - self.start
        log.info(msg, extra={**self.fields, "bytes": self.bytes, "chunks": self.chunks,
                             "seconds": round(secs, 3)})


# ---- sender -----------------------------------------------------------------------------
async def send_snapshot(t: PeerTransport, peer_id: int, url: str, m: Message) -> None:
    """Stream the checkpoint ``m`` names to ``peer_id``; report the outcome to raft."""
    from datastore.server.transport import open_peer_channel

    s = t.server
    start = time.monotonic()
    assert m.snapshot is not None
    ckpts = s.cluster_ops.checkpoints
    prep = ckpts.acquire(m.snapshot.data)
    if prep is None:  # replaced before we got to it: raft asks again
        t.report_snapshot(peer_id, False)
        return
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1, thread_name_prefix="snap-send")
    chunks = image_chunks(prep.path, _chunk_bytes())
    delay = _chunk_delay()
    progress = _Progress("send", to=f"{peer_id:x}", index=prep.meta.index)
    channel: grpc.aio.Channel | None = None
    call: grpc.aio.StreamUnaryCall | None = None
    ok = False
    t.snapshots.in_flight(t.snapshots.sending, f"{peer_id:x}", 1)
    try:
        channel = await open_peer_channel(url, s.cfg.peer_tls)
        call = raft_pb2_grpc.RaftTransportStub(channel).SendSnapshot()
        await call.write(pb.SnapshotChunk(cluster_id=s.cluster_id,
                                          message=codec.message_to_pb(m)))
        h = hashlib.sha256()
        while True:
            data = await loop.run_in_executor(pool, _next_hashed, chunks, h)
            if data is None:
                break
            await call.write(pb.SnapshotChunk(data=data))  # waits on flow control
            progress.add(len(data))
            if delay:
                await asyncio.sleep(delay)  # test-only pacing (CHUNK_DELAY_ENV)
        await call.write(pb.SnapshotChunk(done=True, sha256=h.digest(),
                                          total_bytes=progress.bytes))
        await call.done_writing()
        await call
        ok = True
        t.snapshots.send_done(f"{peer_id:x}", True, start)
        progress.done("sent a snapshot")
    except asyncio.CancelledError:
        raise
    except Exception as e:  # peer down, restarted, refused the image...
        t.snapshots.send_done(f"{peer_id:x}", False, start)
        if await _unimplemented(call):  # a release from before streamed snapshots
            t.snapshots_unsupported(peer_id)
        else:
            log.warning("sending a snapshot failed",
                        extra={"to": f"{peer_id:x}", "index": prep.meta.index, "error": str(e)})
    finally:
        t.snapshots.in_flight(t.snapshots.sending, f"{peer_id:x}", -1)
        with contextlib.suppress(Exception):
            await loop.run_in_executor(pool, chunks.close)  # closes the checkpoint's db
        pool.shutdown(wait=False)
        ckpts.release(prep)
        if channel is not None:
            await channel.close()
        if not ok:
            with contextlib.suppress(Exception):
                s.node.report_unreachable(peer_id)
        t.report_snapshot(peer_id, ok)


async def _unimplemented(call: grpc.aio.StreamUnaryCall | None) -> bool:
    """Did the peer answer UNIMPLEMENTED? A write usually fails first ("RPC already
    finished", "Internal error from Core"), so wait briefly for the call's own status
    rather than trust the exception."""
    if call is None:
        return False
    with contextlib.suppress(Exception):
        return await asyncio.wait_for(call.code(), 2.0) == grpc.StatusCode.UNIMPLEMENTED
    return False


# ---- receiver ---------------------------------------------------------------------------
async def receive_snapshot(t: PeerTransport, requests: AsyncIterator[pb.SnapshotChunk],
                           ctx: grpc.aio.ServicerContext) -> pb.SnapshotAck:
    from datastore.server.transport import ERR_REMOVED

    s = t.server
    start = time.monotonic()
    it = requests.__aiter__()
    head = await it.__anext__()
    if head.cluster_id and s.cluster_id and head.cluster_id != s.cluster_id:
        t.snapshots.receive_done(UNKNOWN_SENDER, False, start)
        await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "cluster id mismatch")
    m = codec.message_from_pb(head.message)
    frm = f"{m.frm:x}"
    if m.type != MsgType.MsgSnap or m.snapshot is None:
        t.snapshots.receive_done(frm, False, start)
        await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first chunk must carry a MsgSnap")
    assert m.snapshot is not None
    if m.frm in s.cluster_ops.removed_ids:
        t.snapshots.receive_done(frm, False, start)
        await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, ERR_REMOVED)
    inc = s.data_dir / INCOMING_DIR
    inc.mkdir(exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1, thread_name_prefix="snap-recv")
    meta = m.snapshot.metadata
    writer = ImageWriter(inc / f"{RECV_PREFIX}{tag}")
    progress = _Progress("receive", frm=f"{m.frm:x}", index=meta.index)
    log.info("receiving a snapshot", extra={"frm": f"{m.frm:x}", "index": meta.index,
                                             "term": meta.term})
    installed = False
    t.snapshots.in_flight(t.snapshots.receiving, frm, 1)
    try:
        h = hashlib.sha256()
        end: pb.SnapshotChunk | None = None
        async for c in it:
            if c.done:
                end = c
                break
            await loop.run_in_executor(pool, _feed, writer, h, c.data)
            progress.add(len(c.data))
        if end is None:
            raise ValueError("the snapshot stream ended before its last chunk")
        if end.total_bytes != progress.bytes or end.sha256 != h.digest():
            raise ValueError("the snapshot stream's checksum does not match")
        await loop.run_in_executor(pool, writer.finish)
        # Rename and step with no await in between: an install (in the node loop) removes
        # every other complete image, and must never see this one before raft does.
        name = f"{IMAGE_PREFIX}{meta.index}-{tag}"
        os.rename(writer.path, inc / name)
        installed = True
        s.receive([dataclasses.replace(m, snapshot=Snapshot(name.encode(), meta))])
        t.snapshots.receive_done(frm, True, start)
        progress.done("received a snapshot")
        return pb.SnapshotAck()
    except asyncio.CancelledError:  # the sender went away (killed, restarted, removed)
        t.snapshots.receive_done(frm, False, start)
        log.warning("receiving a snapshot failed", extra={"frm": f"{m.frm:x}",
                                                           "index": meta.index,
                                                           "error": "stream cancelled"})
        raise
    except Exception as e:
        t.snapshots.receive_done(frm, False, start)
        log.warning("receiving a snapshot failed", extra={"frm": f"{m.frm:x}",
                                                           "index": meta.index, "error": str(e)})
        await ctx.abort(grpc.StatusCode.DATA_LOSS, f"snapshot not received: {e}")
        raise  # abort raises; this is for the type checker
    finally:
        t.snapshots.in_flight(t.snapshots.receiving, frm, -1)
        if not installed:
            await loop.run_in_executor(pool, writer.abort)
        pool.shutdown(wait=False)


def _feed(writer: ImageWriter, h: hashlib._Hash, data: bytes) -> None:
    h.update(data)
    writer.feed(data)
