"""The snapshot image on disk, with real RocksDB files: a leader's checkpoint streamed as
records in small chunks, written as SST files and installed into another member's state;
an install interrupted after its marker is finished on restart; the leader's checkpoint
source answers "temporarily unavailable" until its thread has made one."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from datastore.api.internalpb.internal_pb2 import MemberRecord
from datastore.raft.types import Snapshot, SnapshotTemporarilyUnavailable
from datastore.server import codec
from datastore.server.cluster_ops import installed_snapshot_meta
from datastore.server.membership import META_LOCAL_ID
from datastore.server.snapshot_image import (
    _REC,
    INCOMING_DIR,
    MARKER,
    META_INSTALLED_SNAPSHOT,
    Checkpoints,
    ImageWriter,
    _write_durably,
    image_chunks,
    install_image,
    recover_install,
)
from datastore.storage.backend import STATE_FAMILIES, Backend

LOCAL = (META_LOCAL_ID, META_INSTALLED_SNAPSHOT)


def _fill(b: Backend, tag: bytes, n: int, local_id: int) -> None:
    wb = b.batch()
    for i in range(n):
        wb.put(b"%08d" % i, tag + os.urandom(50), b.handle("key"))
    wb.put(b"applied_index", (1000).to_bytes(8, "big"), b.handle("meta"))
    wb.put(b"applied_term", (3).to_bytes(8, "big"), b.handle("meta"))
    wb.put(b"alarm/" + tag, b"", b.handle("meta"))
    wb.put(META_LOCAL_ID, local_id.to_bytes(8, "big"), b.handle("meta"))
    wb.put((7).to_bytes(8, "big"), tag, b.handle("lease"))
    m = MemberRecord(ID=local_id, name=tag.decode(), peer_urls=["http://x"])
    wb.put(local_id.to_bytes(8, "big"), m.SerializeToString(), b.handle("members"))
    b.write(wb, sync=True)


def _state(b: Backend) -> dict[str, list[tuple[bytes, bytes]]]:
    return {cf: [(k, v) for k, v in b.scan(cf, b"") if not ((cf == "meta" and k in LOCAL)
                                                                 or k in (b"applied_index",
                                                                          b"applied_term"))]
            for cf in STATE_FAMILIES}


def _receive(leader: Backend, data_dir: Path, tmp: Path) -> str:
    """Checkpoint ``leader``, stream it in 300-byte chunks into an image under data_dir."""
    leader.checkpoint(tmp / "ckpt")
    inc = data_dir / INCOMING_DIR
    inc.mkdir(parents=True, exist_ok=True)
    w = ImageWriter(inc / "recv-1")
    chunks = list(image_chunks(tmp / "ckpt", 300))
    assert len(chunks) > 10
    for c in chunks:
        w.feed(c)
    w.finish()
    os.rename(inc / "recv-1", inc / "img-1")
    return "img-1"


def test_image_roundtrip_replaces_state_and_keeps_local_identity(tmp_path: Path) -> None:
    leader = Backend(tmp_path / "leader")
    _fill(leader, b"L", 200, local_id=1)
    follower = Backend(tmp_path / "f" / "state")
    _fill(follower, b"F", 300, local_id=2)  # more keys than the image: all must go
    name = _receive(leader, tmp_path / "f", tmp_path)
    meta = Checkpoints.describe(tmp_path / "ckpt")
    assert meta.index == 1000 and meta.term == 3 and meta.conf_state.voters == (1,)
    install_image(follower, tmp_path / "f", name, meta, (2).to_bytes(8, "big"))
    assert _state(follower) == _state(leader)
    assert follower.get("meta", META_LOCAL_ID) == (2).to_bytes(8, "big")
    assert installed_snapshot_meta(follower) == meta
    assert list((tmp_path / "f" / INCOMING_DIR).iterdir()) == []


def test_install_interrupted_after_its_marker_is_finished_on_restart(tmp_path: Path) -> None:
    leader = Backend(tmp_path / "leader")
    _fill(leader, b"L", 200, local_id=1)
    data = tmp_path / "f"
    follower = Backend(data / "state")
    _fill(follower, b"F", 300, local_id=2)
    name = _receive(leader, data, tmp_path)
    meta = Checkpoints.describe(tmp_path / "ckpt")
    # the marker, then a crash after the range deletes (nothing ingested yet)
    snap_raw = codec.snapshot_to_pb(Snapshot(b"", meta)).SerializeToString()
    _write_durably(data / INCOMING_DIR / MARKER, json.dumps(
        {"image": name, "snapshot": snap_raw.hex(),
         "local_id": (2).to_bytes(8, "big").hex()}).encode())
    wb = follower.batch()
    for cf in STATE_FAMILIES:
        wb.delete_range(b"", b"\xff" * 20, follower.handle(cf))
    follower.write(wb, sync=True)
    follower.close()
    follower = Backend(data / "state")
    recover_install(data, follower)
    assert _state(follower) == _state(leader)
    assert follower.get("meta", META_LOCAL_ID) == (2).to_bytes(8, "big")
    assert not (data / INCOMING_DIR).exists() or list((data / INCOMING_DIR).iterdir()) == []


def test_writer_refuses_records_out_of_order(tmp_path: Path) -> None:
    w = ImageWriter(tmp_path / "img")
    w.feed(_REC.pack(1, 1, 1) + b"a" + b"v")
    with pytest.raises(ValueError):
        w.feed(_REC.pack(0, 1, 1) + b"b" + b"v")  # an earlier family after a later one
    w2 = ImageWriter(tmp_path / "img2")
    with pytest.raises(ValueError):
        w2.feed(_REC.pack(0, 5, 1) + b"ab")  # truncated


def test_checkpoint_source_is_unavailable_until_made_and_stale_after_compaction(
        tmp_path: Path) -> None:
    b = Backend(tmp_path / "state")
    _fill(b, b"L", 10, local_id=1)

    async def go() -> None:
        woke = asyncio.Event()
        ck = Checkpoints(b, tmp_path, woke.set)
        with pytest.raises(SnapshotTemporarilyUnavailable):
            ck.snapshot(first_index=900)
        assert ck.busy  # the raft log must not be compacted meanwhile
        await asyncio.wait_for(woke.wait(), 30)
        snap = ck.snapshot(first_index=900)
        assert snap.metadata.index == 1000 and not ck.busy
        p = ck.acquire(snap.data)
        assert p is not None and ck.busy
        ck.release(p)
        # the log was compacted past it: a newer one is made, the old one removed
        with pytest.raises(SnapshotTemporarilyUnavailable):
            ck.snapshot(first_index=1002)
        assert not p.path.exists()
        ck.close()

    asyncio.run(go())
