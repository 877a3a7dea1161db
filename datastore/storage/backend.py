"""The RocksDB backend: one database, a column family per kind of data.

Every key and value is raw bytes (``raw_mode=True``): rocksdict's default mode tags each
key with a type byte, which would break byte-order == revision-order. Writes go through
one ``WriteBatch`` per apply or persist step; only raft log/hard-state writes are synced,
because everything else can be replayed from the log after a crash.
"""

from __future__ import annotations

import gc
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    Checkpoint,
    ColumnFamily,
    DBRecoveryMode,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

# Two databases, like etcd's wal/ and db: the raft log is fsynced on its own, so a synced
# log write never holds up a state write queued behind it in RocksDB's write group.
# WAL: raft_log: index(8B BE) -> raftpb.Entry; raft_state: hard state, conf state, snapshot meta
WAL_FAMILIES = ("raft_log", "raft_state")
# STATE: key: revision(17B, +b"t" for tombstones) -> mvccpb.KeyValue
# meta: applied index, current/compacted revision, alarms, cluster id ...
# lease: id(8B BE) -> LeaseRecord; members: id(8B BE) -> MemberRecord
STATE_FAMILIES = ("key", "meta", "lease", "members")

# etcd's --unsafe-no-fsync (Config.unsafe_no_fsync) skips the WAL fsync: for test servers
# thrown away after use, and for the power-loss tests to prove they detect a server that
# acknowledges writes it never made durable. This variable sets the flag (config.apply_env).
UNSAFE_NO_FSYNC_ENV = "DATASTORE_UNSAFE_NO_FSYNC"


class CorruptDataError(RuntimeError):
    """The data dir holds damaged or inconsistent data: the member must not serve it."""


CORRUPT_ACTION = ("the data dir is damaged (disk corruption, a lost or torn write): do not serve "
                  "from it; restore it from a snapshot (datastore snapshot restore) or remove "
                  "the member and add it back with an empty data dir")


# Memory (RSS) bounds. Families that hold a few small records rewritten on every apply
# (applied index, current revision, hard state...) get small memtables: RocksDB keeps every
# overwritten version until a flush, so the 64 MiB default would grow to 64 MiB (x2 while
# flushing) of dead versions each. The raft log is also held in memory (raftlog.py) and
# read from disk only after a restart, so a large memtable would hold it a second time.
# The key family keeps the default (reads look in its memtable first).
MEMTABLE_BYTES = {"meta": 4 << 20, "lease": 4 << 20, "members": 4 << 20, "raft_state": 4 << 20,
                  "raft_log": 16 << 20}
# One block cache for every family of every database in the process: without it each
# family's table factory makes its own 32 MiB cache (6 families: up to 192 MiB).
BLOCK_CACHE_BYTES = 32 << 20
_block_cache: Cache | None = None


def _shared_block_cache() -> Cache:
    global _block_cache
    if _block_cache is None:
        _block_cache = Cache(BLOCK_CACHE_BYTES)
    return _block_cache


def _options(strict_wal: bool = False, family: str | None = None) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    table = BlockBasedOptions()
    table.set_block_cache(_shared_block_cache())
    opts.set_block_based_table_factory(table)
    if family in MEMTABLE_BYTES:
        opts.set_write_buffer_size(MEMTABLE_BYTES[family])
    if strict_wal:
        # The raft log: an incomplete last record is a write whose fsync never finished
        # (tolerated, like etcd's torn-write repair); a bad record anywhere else is
        # corruption and must stop the member. RocksDB's default (point in time) would
        # silently drop every record after it, acknowledged entries included.
        opts.set_wal_recovery_mode(DBRecoveryMode.tolerate_corrupted_tail_records())
    return opts


class Backend:
    """Owns the RocksDB handle. Not thread-safe for writers: one writer at a time."""

    def __init__(self, path: str | Path, families: tuple[str, ...] = STATE_FAMILIES,
                 unsafe_no_fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        strict = families == WAL_FAMILIES
        cfs = {name: _options(strict, name) for name in families}
        try:
            self.db = Rdict(str(self.path), _options(strict), column_families=cfs)
        except Exception as e:
            if "Corruption" in str(e):
                raise CorruptDataError(f"cannot open {self.path}: {e}; {CORRUPT_ACTION}") from e
            raise
        self._cf: dict[str, Rdict] = {n: self.db.get_column_family(n) for n in families}
        self._handle: dict[str, ColumnFamily] = {
            n: self.db.get_column_family_handle(n) for n in families
        }
        self._nosync = WriteOptions()
        self._size: int | None = None  # size() until the next write
        self._unsafe_no_fsync = unsafe_no_fsync
        if unsafe_no_fsync:
            logging.getLogger("datastore.storage").warning(
                "--unsafe-no-fsync: writes are NOT fsynced; acknowledged writes can be lost on "
                "power loss (for throwaway test members only)", extra={"path": str(self.path)})

    def cf(self, name: str) -> Rdict:
        return self._cf[name]

    def handle(self, name: str) -> ColumnFamily:
        return self._handle[name]

    @staticmethod
    def batch() -> WriteBatch:
        return WriteBatch(raw_mode=True)

    def write(self, batch: WriteBatch, sync: bool) -> None:
        # rocksdict keeps the GIL through a synced write, stalling every other thread for
        # the whole fsync; flush_wal(sync=True) releases it. Same durability: the batch is
        # in the WAL once write() returns, and flush_wal fsyncs the WAL.
        self.db.write(batch, self._nosync)
        self._size = None
        if sync and not self._unsafe_no_fsync:
            self.db.flush_wal(True)

    def sync(self) -> None:
        """Make every write so far durable (fsync this database's WAL)."""
        self.db.flush_wal(True)

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self._cf[cf].get(key)

    def scan(self, cf: str, start: bytes, end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) for start <= key < end in byte order."""
        it = self._cf[cf].iter()
        it.seek(start)
        while it.valid():
            k = it.key()
            if end is not None and k >= end:
                return
            yield k, it.value()
            it.next()
        # An iterator stops (valid() is False) on a read error too, e.g. a block whose
        # checksum fails: without this check a damaged file would look like a shorter one.
        it.status()

    def scan_back(self, cf: str, lo: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) for key >= lo from the last key down, in reverse byte order."""
        it = self._cf[cf].iter()
        it.seek_to_last()
        while it.valid():
            k = it.key()
            if k < lo:
                return
            yield k, it.value()
            it.prev()
        it.status()

    def size(self) -> int:
        """Bytes the database occupies: SST files plus memtables (what the quota counts).

        Remembered until the next write: every write request checks the quota, and asking
        RocksDB costs ten property reads, so under load it is asked once per apply batch.
        """
        if self._size is not None:
            return self._size
        sst = self.db.property_int_value("rocksdb.total-sst-files-size") or 0
        mem = self.db.property_int_value("rocksdb.size-all-mem-tables") or 0
        for h in self._cf.values():
            sst += h.property_int_value("rocksdb.total-sst-files-size") or 0
            mem += h.property_int_value("rocksdb.size-all-mem-tables") or 0
        self._size = int(sst + mem)
        return self._size

    def size_in_use(self) -> int:
        live = 0
        for h in self._cf.values():
            live += h.property_int_value("rocksdb.estimate-live-data-size") or 0
            live += h.property_int_value("rocksdb.size-all-mem-tables") or 0
        return int(live)

    def defragment(self) -> None:
        """Flush memtables and compact every column family, dropping deleted data."""
        for h in self._cf.values():
            h.flush()
            h.compact_range(None, None)
        self._size = None

    def checkpoint(self, dest: str | Path) -> None:
        """A consistent, hard-linked copy of the whole database at ``dest``."""
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        self.db.flush_wal(True)
        Checkpoint(self.db).create_checkpoint(str(dest))

    def close(self) -> None:
        # Column-family handles keep the database (and its LOCK file) alive: drop them first.
        self._cf.clear()
        self._handle.clear()
        self.db.close()
        del self.db
        gc.collect()
