"""The state image a leader sends a lagging member as a raft snapshot, on disk at both ends.

Leader: ``Checkpoints`` takes a RocksDB checkpoint of the state database in a thread (hard
links: a consistent point-in-time view of every column family, at the applied index
recorded inside it); ``image_chunks`` reads it back as a sorted record stream in bounded
chunks. Nothing holds the whole image in memory.

Follower: ``ImageWriter`` turns the received records into one SST file per column family
under ``<data-dir>/snap-incoming/``; ``install_image`` replaces the state with it;
``recover_install`` runs at start-up, before anything reads the state.

Crash safety of the install: the image (SST files, fsynced) and then a marker file naming
it are on disk before the state database is touched; the marker is the commit point.
Replacing the state (per family: a range delete of everything, then ingesting the image's
SST file) is idempotent, so a restart that finds the marker does it again from the same
files; the marker goes only after the last write is synced. A crash before the marker
leaves the old state untouched, and the restart discards every image, complete or
half-received (the leader sends a new one).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    IngestExternalFileOptions,
    Options,
    Rdict,
    ReadOptions,
    SstFileWriter,
)

from datastore.api.internalpb.internal_pb2 import MemberRecord
from datastore.api.raftpb import raft_pb2
from datastore.raft.types import (
    ConfState,
    Snapshot,
    SnapshotMetadata,
    SnapshotTemporarilyUnavailable,
)
from datastore.server import codec
from datastore.server.failpoint import failpoint
from datastore.server.membership import META_LOCAL_ID
from datastore.storage.backend import CORRUPT_ACTION, STATE_FAMILIES, Backend, CorruptDataError

log = logging.getLogger("datastore.snapshot")

INCOMING_DIR = "snap-incoming"
OUTGOING_DIR = "snap-outgoing"
MARKER = "INSTALL.json"  # in INCOMING_DIR: the image being installed (the commit point)
RECV_PREFIX = "recv-"  # an image still being received
IMAGE_PREFIX = "img-"  # a complete, verified image
# meta: the raft snapshot whose image the state holds, written with the image itself so
# a crash before the raft log records the snapshot can be finished on restart.
META_INSTALLED_SNAPSHOT = b"installed_snapshot"
_LOCAL_META = (META_LOCAL_ID, META_INSTALLED_SNAPSHOT)  # never part of an image
_REC = struct.Struct(">BII")  # family index, key length, value length
SCAN_CACHE_BYTES = 8 << 20


def conf_state_of(members: list[MemberRecord]) -> ConfState:
    return ConfState(voters=tuple(sorted(m.ID for m in members if not m.is_learner)),
                     learners=tuple(sorted(m.ID for m in members if m.is_learner)))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan_options(cache: Cache) -> Options:
    """Options for reading a checkpoint once: index blocks live in one small block cache
    instead of staying in memory per open file, so the reader's memory does not grow with
    the store's size."""
    o = Options(raw_mode=True)
    t = BlockBasedOptions()
    t.set_block_cache(cache)
    t.set_cache_index_and_filter_blocks(True)
    o.set_block_based_table_factory(t)
    return o


def open_checkpoint(path: Path) -> Rdict:
    """A checkpoint of the state database, open read-only for one pass over it."""
    cache = Cache(SCAN_CACHE_BYTES)
    return Rdict(str(path), _scan_options(cache),
                 column_families={cf: _scan_options(cache) for cf in STATE_FAMILIES},
                 access_type=AccessType.read_only(False))


def close_checkpoint(db: Rdict) -> None:
    db.close()
    del db
    gc.collect()  # column-family objects keep the database open until collected


# ---- leader: a point-in-time checkpoint, streamed as records ------------------------------
@dataclass
class Prepared:
    """A checkpoint of the state database, ready to be sent as a raft snapshot."""

    name: str
    path: Path
    meta: SnapshotMetadata
    users: int = 0  # transfers reading it
    stale: bool = False  # replaced by a newer one: removed when the last transfer ends

    @property
    def token(self) -> bytes:
        """What the raft snapshot's data says: which checkpoint to stream."""
        return self.name.encode()


class Checkpoints:
    """The leader's snapshot source (``storage.snapshot()``): never blocks the event loop.

    The first request starts a checkpoint in a thread and answers "temporarily
    unavailable" (raft retries on a later heartbeat response); later requests get the
    prepared one as long as the raft log still holds every entry after it.
    """

    def __init__(self, backend: Backend, data_dir: Path, wake: Callable[[], None]) -> None:
        self.backend = backend
        self.dir = data_dir / OUTGOING_DIR
        shutil.rmtree(self.dir, ignore_errors=True)  # a previous run's checkpoints
        self._wake = wake
        self.current: Prepared | None = None
        self._by_name: dict[str, Prepared] = {}
        self._preparing: Future[Prepared] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="snap-checkpoint")

    @property
    def busy(self) -> bool:
        """A checkpoint is being made or sent: the raft log must keep the entries after it
        (etcd skips log compaction while a snapshot is in flight, for the same reason)."""
        return self._preparing is not None or any(p.users for p in self._by_name.values())

    def snapshot(self, first_index: int) -> Snapshot:
        cur = self.current
        if cur is not None:
            if cur.meta.index + 1 >= first_index:
                return Snapshot(cur.token, cur.meta)
            # the log no longer holds the entries after it: useless, make a newer one
            self.current = None
            cur.stale = True
            self._maybe_remove(cur)
        if self._preparing is None:
            loop = asyncio.get_running_loop()
            fut = self._pool.submit(self._prepare)
            self._preparing = fut
            fut.add_done_callback(lambda f: loop.call_soon_threadsafe(self._adopt, f))
        raise SnapshotTemporarilyUnavailable("raft: snapshot is being prepared")

    def _prepare(self) -> Prepared:  # in the checkpoint thread
        t0 = time.monotonic()
        name = f"ckpt-{time.time_ns()}"
        path = self.dir / name
        self.dir.mkdir(exist_ok=True)
        self.backend.checkpoint(path)
        meta = self.describe(path)
        log.info("made a checkpoint to send as a snapshot",
                 extra={"index": meta.index, "seconds": round(time.monotonic() - t0, 3)})
        return Prepared(name, path, meta)

    @staticmethod
    def describe(path: Path) -> SnapshotMetadata:
        """The raft snapshot metadata of a checkpoint: its applied index and term, and the
        ConfState of the member records inside it (so image and metadata always agree)."""
        db = open_checkpoint(path)
        try:
            meta_cf = db.get_column_family("meta")
            raw_i = meta_cf.get(b"applied_index")
            raw_t = meta_cf.get(b"applied_term")
            members = [MemberRecord.FromString(v) for _, v in
                       db.get_column_family("members").items()]
            del meta_cf
        finally:
            close_checkpoint(db)
        index = int.from_bytes(raw_i, "big") if raw_i else 0
        term = int.from_bytes(raw_t, "big") if raw_t else 0
        return SnapshotMetadata(conf_state_of(members), index, term)

    def _adopt(self, fut: Future[Prepared]) -> None:  # on the event loop
        self._preparing = None
        try:
            p = fut.result()
        except Exception as e:
            log.warning("making a snapshot checkpoint failed", extra={"error": str(e)})
            return
        old = self.current
        self.current = p
        self._by_name[p.name] = p
        if old is not None:
            old.stale = True
            self._maybe_remove(old)
        self._wake()

    def acquire(self, token: bytes) -> Prepared | None:
        p = self._by_name.get(token.decode(errors="replace"))
        if p is not None:
            p.users += 1
        return p

    def release(self, p: Prepared) -> None:
        p.users -= 1
        self._maybe_remove(p)

    def _maybe_remove(self, p: Prepared) -> None:
        if p.stale and p.users == 0:
            self._by_name.pop(p.name, None)
            shutil.rmtree(p.path, ignore_errors=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def image_chunks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    """The checkpoint at ``path`` as records, ``chunk_bytes`` at a time (whole records;
    one bigger record gets a chunk of its own). Run it in a thread: it reads the disk."""
    db = open_checkpoint(path)
    buf = bytearray()
    try:
        for i, cf in enumerate(STATE_FAMILIES):
            ro = ReadOptions()
            ro.fill_cache(False)  # a one-pass scan: keep the block cache small
            ro.set_readahead_size(2 << 20)
            it = db.get_column_family(cf).iter(ro)
            it.seek_to_first()
            while it.valid():
                k = it.key()
                if not (cf == "meta" and k in _LOCAL_META):
                    v = it.value()
                    buf += _REC.pack(i, len(k), len(v))
                    buf += k
                    buf += v
                    if len(buf) >= chunk_bytes:
                        yield bytes(buf)
                        buf.clear()
                it.next()
            it.status()  # a read error ends iteration too: never send a shorter image
            del it
        if buf:
            yield bytes(buf)
    finally:
        close_checkpoint(db)


# ---- follower: receive into SST files, install crash-safely ---------------------------------
class ImageWriter:
    """Writes received records as one sorted SST file per column family (in a thread)."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True)
        self.path = path
        self._family = -1
        self._w: SstFileWriter | None = None
        self.records = 0

    def feed(self, data: bytes) -> None:
        off, n = 0, len(data)
        while off < n:
            i, kl, vl = _REC.unpack_from(data, off)
            off += _REC.size
            k = data[off:off + kl]
            off += kl
            v = data[off:off + vl]
            off += vl
            if i != self._family:
                if i < self._family or i >= len(STATE_FAMILIES):
                    raise ValueError(f"snapshot image: family {i} out of order")
                self._finish_file()
                self._family = i
                self._w = SstFileWriter(Options(raw_mode=True))
                self._w.open(str(self.path / f"{STATE_FAMILIES[i]}.sst"))
            assert self._w is not None
            self._w[k] = v  # raises unless keys strictly increase
            self.records += 1
        if off != n:
            raise ValueError("snapshot image: truncated record")

    def _finish_file(self) -> None:
        if self._w is not None:
            self._w.finish()
            self._w = None

    def finish(self) -> None:
        """Close the last file and make every file durable."""
        self._finish_file()
        for f in self.path.iterdir():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(self.path)

    def abort(self) -> None:
        self._w = None
        shutil.rmtree(self.path, ignore_errors=True)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def install_image(backend: Backend, data_dir: Path, name: str, meta: SnapshotMetadata,
                  local_id: bytes) -> None:
    """Replace the state database with the received image ``name`` (see the module doc)."""
    inc = data_dir / INCOMING_DIR
    img = inc / name
    if not (img.name.startswith(IMAGE_PREFIX) and img.is_dir()):
        raise FileNotFoundError(f"snapshot image {img} is missing")
    snap_raw = codec.snapshot_to_pb(Snapshot(b"", meta)).SerializeToString()
    marker = {"image": name, "snapshot": snap_raw.hex(), "local_id": local_id.hex()}
    _write_durably(inc / MARKER, json.dumps(marker).encode())
    _replace_state(backend, img, meta, snap_raw, local_id)
    _finish(inc, keep=RECV_PREFIX)


def _replace_state(backend: Backend, img: Path, meta: SnapshotMetadata, snap_raw: bytes,
                   local_id: bytes) -> None:
    wb = backend.batch()
    for cf in STATE_FAMILIES:
        it = backend.cf(cf).iter()
        it.seek_to_last()
        if it.valid():
            wb.delete_range(b"", it.key() + b"\x00", backend.handle(cf))
        del it
    backend.write(wb, sync=False)
    opts = IngestExternalFileOptions()
    opts.set_move_files(True)  # of a hard link: the image keeps its file for a redo
    for cf in STATE_FAMILIES:
        sst = img / f"{cf}.sst"
        if not sst.exists():
            continue  # an empty family
        link = img / f"{cf}.ingest"
        link.unlink(missing_ok=True)
        os.link(sst, link)
        backend.cf(cf).ingest_external_file([str(link)], opts)
        failpoint("snapshot-install-midway")  # some families replaced, not all
    wb = backend.batch()
    h = backend.handle("meta")
    wb.put(b"applied_index", meta.index.to_bytes(8, "big"), h)
    wb.put(b"applied_term", meta.term.to_bytes(8, "big"), h)
    wb.put(META_INSTALLED_SNAPSHOT, snap_raw, h)
    if local_id:
        wb.put(META_LOCAL_ID, local_id, h)
    backend.write(wb, sync=True)  # the WAL fsync covers the range deletes before it
    backend.sync()


def _finish(inc: Path, keep: str | None) -> None:
    """Remove the marker (install complete), then every image except those being received."""
    marker = inc / MARKER
    if marker.exists():
        marker.unlink()
        _fsync_dir(inc)
    for p in inc.iterdir():
        if keep is None or not p.name.startswith(keep):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def recover_install(data_dir: Path, backend: Backend) -> None:
    """At start-up: finish an interrupted install; discard every other image."""
    inc = data_dir / INCOMING_DIR
    if not inc.exists():
        return
    marker = inc / MARKER
    if marker.exists():
        m = json.loads(marker.read_text())
        img = inc / m["image"]
        if not img.is_dir():
            raise CorruptDataError(f"{marker} names a missing snapshot image; {CORRUPT_ACTION}")
        snap_raw = bytes.fromhex(m["snapshot"])
        meta = codec.snapshot_from_pb(raft_pb2.Snapshot.FromString(snap_raw)).metadata
        log.warning("finishing an interrupted snapshot image install",
                    extra={"index": meta.index, "image": img.name})
        _replace_state(backend, img, meta, snap_raw, bytes.fromhex(m["local_id"]))
    leftovers = [p.name for p in inc.iterdir() if p.name != MARKER]
    if leftovers:
        log.info("discarding snapshot images not installed", extra={"images": leftovers})
    _finish(inc, keep=None)
