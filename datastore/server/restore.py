"""``datastore snapshot restore``: a new member's data dir from a snapshot file.

Accepts etcd's snapshots (3.4, 3.5, 3.6: a bbolt ``db`` followed by its SHA-256, or with
``--skip-hash-check`` a ``db`` file copied from a data dir), the datastore's own (the
same format), and the datastore's older tar snapshots. The restored member starts a *new*
cluster with the membership given on the command line, as ``etcdutl snapshot restore``
does: the raft log starts empty and the applied index at zero, while MVCC revisions,
leases, auth and the compaction point continue from the snapshot.

Nothing is written unless the data dir is missing or empty (and ``--wal-dir``, if given,
missing: the member is then started with it), and a restore that fails leaves them as it
found them.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from datastore.bbolt import BoltReader
from datastore.server.cluster_ops import META_INSTALLED_SNAPSHOT
from datastore.server.config import Config
from datastore.server.membership import META_CLUSTER_ID, META_LOCAL_ID
from datastore.snapshot import framing
from datastore.snapshot.etcd_import import ImportStats, import_etcd_db
from datastore.storage.backend import Backend
from datastore.util.progress import Progress, human_bytes

log = logging.getLogger("datastore.snapshot")

PARTIAL = "state.restoring"  # the state being built; renamed to ``state`` when complete


@dataclass(frozen=True)
class Restored:
    """What a restore did, for its summary line."""

    src: Path
    data_dir: Path
    seconds: float
    stats: ImportStats | None  # None: an older datastore tar snapshot (not counted)

    def summary(self) -> str:
        where = f"from {self.src} into {self.data_dir} in {self.seconds:.1f} s"
        st = self.stats
        if st is None:
            return f"restored a datastore tar snapshot {where}"
        extra = "".join(f", {n:,} {what}{'' if n == 1 else 's'}" for n, what in (
            (st.leases, "lease"), (st.users, "user"), (st.roles, "role")) if n)
        return (f"restored {st.revisions:,} key revisions{extra} (revision "
                f"{st.current_revision:,}) {where}")


def restore_snapshot(file: str, cfg: Config, skip_hash_check: bool = False,
                     progress: Progress | None = None, bump_revision: int = 0,
                     mark_compacted: bool = False) -> Restored:
    """Restore ``file`` into ``cfg``'s data dir; ``progress`` (if given) is told about the
    hash check and the import as they go. ``bump_revision`` and ``mark_compacted`` are
    etcdutl's pair: both or neither."""
    t0 = time.monotonic()
    if bump_revision < 0:
        raise ValueError(f"invalid argument \"{bump_revision}\" for \"--bump-revision\" flag: "
                         "it is the (non-negative) amount to add to the latest revision")
    if (bump_revision == 0) == mark_compacted:  # etcdutl's words, its flag name included
        raise ValueError("--mark-compacted required if --revision-bump > 0")
    src = Path(file)
    data = Path(cfg.resolved_data_dir)
    try:
        if data.exists() and any(data.iterdir()):
            raise ValueError(f"data-dir {str(data)!r} not empty or could not be read")
    except OSError as e:
        raise ValueError(f"data-dir {str(data)!r} not empty or could not be read ({e})") from None
    if cfg.wal_dir and Path(cfg.wal_dir).exists():  # etcdutl's words
        raise ValueError(f'wal-dir "{cfg.wal_dir}" exists')
    if not src.is_file():
        raise ValueError(f"open {file}: no such file (the snapshot to restore)")
    on_bytes = None
    if progress is not None:
        def on_bytes(done: int, total: int) -> None:
            progress.update(done, f"{human_bytes(done)} of {human_bytes(total)}", total=total,
                            description="checking the snapshot's hash")
    db_size = framing.verify(src, skip_hash_check, on_bytes)
    created = not data.exists()
    data.mkdir(parents=True, exist_ok=True)
    stats = None
    try:
        if framing.is_legacy_tar(src):
            if bump_revision:
                raise ValueError(f"{src}: --bump-revision needs an etcd-format snapshot, and "
                                 "this is an older datastore tar snapshot (restore it, start "
                                 "the member and save a new one first)")
            _restore_tar(src, db_size, data)
        else:
            stats = _restore_bbolt(src, db_size, data, progress, bump_revision)
    except BaseException:
        if created:
            shutil.rmtree(data, ignore_errors=True)
        else:  # it was empty: leave it empty
            for p in data.iterdir():
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        raise
    if cfg.wal_dir:  # the raft log starts empty there: the member is started with it
        Path(cfg.wal_dir).mkdir(parents=True, mode=0o700)
    if progress is not None:
        progress.close()  # before the log line, which shares the terminal
    if stats is not None:
        log.info("restored snapshot", extra={
            "path": str(src), "data_dir": str(data), "revision": stats.current_revision,
            "compact_revision": stats.compact_revision, "revisions": stats.revisions,
            "leases": stats.leases, "users": stats.users, "roles": stats.roles})
    return Restored(src, data, time.monotonic() - t0, stats)


def _restore_bbolt(src: Path, db_size: int, data: Path, progress: Progress | None,
                   bump_revision: int) -> ImportStats:
    partial = data / PARTIAL
    backend = Backend(partial)
    try:
        with BoltReader(src, db_size) as reader:
            on_progress = None
            if progress is not None:
                total = reader.pages_to_read()

                def on_progress(st: ImportStats) -> None:
                    progress.update(min(reader.pages_read, total),
                                    f"{st.revisions:,} key revisions", total=total,
                                    description="restoring")
            stats = import_etcd_db(reader, backend, on_progress, bump_revision)
    finally:
        backend.close()
    partial.rename(data / "state")
    return stats


def _restore_tar(src: Path, db_size: int, data: Path) -> None:
    """A datastore snapshot from before they were etcd's format: a tar of the state."""
    with tempfile.TemporaryDirectory(dir=data) as tmp:
        with src.open("rb") as f, tarfile.open(fileobj=_Limited(f, db_size), mode="r|") as tar:
            tar.extractall(tmp, filter="data")
        if not (Path(tmp) / "state").is_dir():
            raise ValueError(f"{src}: not a datastore snapshot (the tar holds no state)")
        shutil.move(str(Path(tmp) / "state"), str(data / "state"))
    b = Backend(data / "state")
    wb = b.batch()
    meta = b.handle("meta")
    for k in (b"applied_index", b"applied_term", META_CLUSTER_ID, META_LOCAL_ID,
              META_INSTALLED_SNAPSHOT):
        wb.delete(k, meta)
    for k, _ in list(b.scan("members", b"")):
        wb.delete(k, b.handle("members"))
    b.write(wb, sync=True)
    b.close()


class _Limited:
    """The first ``n`` bytes of a file (the tar, without the trailing hash)."""

    def __init__(self, f: BinaryIO, n: int) -> None:
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self.left:
            size = self.left
        b = self.f.read(size)
        self.left -= len(b)
        return b
