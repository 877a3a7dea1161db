"""``datastore snapshot restore``: a new member's data dir from a snapshot file.

The snapshot is the state database (keys, history, leases) followed by its SHA-256. The
restored member starts a *new* cluster with the membership given on the command line,
as ``etcdctl snapshot restore`` does: the raft log starts empty and the applied index at
zero, while MVCC revisions continue from the snapshot.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from pathlib import Path

from datastore.server.cluster_ops import META_INSTALLED_SNAPSHOT
from datastore.server.config import Config
from datastore.server.membership import META_CLUSTER_ID, META_LOCAL_ID
from datastore.storage.backend import Backend


def restore_snapshot(file: str, cfg: Config) -> None:
    data = Path(cfg.resolved_data_dir)
    if data.exists() and any(data.iterdir()):
        raise ValueError(f"data dir {data} already exists and is not empty")
    raw = Path(file).read_bytes()
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError(f"{file}: snapshot hash mismatch (truncated or not a datastore snapshot)")
    data.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tar_path = Path(tmp) / "s.tar"
        tar_path.write_bytes(body)
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
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
