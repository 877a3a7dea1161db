"""The storage under the control plane: datastore members, etcd 3.6 or 3.4 members, or kine.

Each backend turns (directory, ports) into process command lines and client URLs; the
ports are chosen once and kept in the state file, so a second ``up`` finds the members'
data under the same addresses.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("datastore", "etcd", "etcd34", "kine")
ETCD34_BIN = "/usr/bin/etcd"  # Debian's etcd 3.4, the other oracle


@dataclass(frozen=True)
class Member:
    name: str
    argv: list[str]
    client_url: str
    data_dir: Path | None = None  # None for kine
    restore_argv: list[str] | None = None  # `snapshot restore` into data_dir, if asked for


def members(backend: str, storage_dir: Path, ports: list[tuple[int, int]],
            etcd_bin: str = "etcd", kine_bin: str = "kine", etcdutl_bin: str = "etcdutl",
            snapshot: Path | None = None) -> list[Member]:
    """One Member per (client port, peer port); kine is a single process.

    With ``snapshot``, each member also gets the command that restores it into its data
    dir under the name and peer URL it will run with: ``datastore snapshot restore`` or
    etcd 3.6's ``etcdutl snapshot restore`` (the same flags), once per member.
    """
    if backend == "kine":
        client = ports[0][0]
        db = storage_dir / "kine" / "state.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        # WAL and a busy timeout: what k3s passes for SQLite.
        dsn = f"sqlite://{db}?_journal=WAL&cache=shared&_busy_timeout=30000"
        # Metrics off: kine would bind *:8080, which is not loopback and may be taken.
        return [Member("kine", [kine_bin, "--endpoint", dsn,
                                "--listen-address", f"127.0.0.1:{client}",
                                "--metrics-bind-address", "0"],
                       f"http://127.0.0.1:{client}")]
    names = [f"{'ds' if backend == 'datastore' else backend}{i}" for i in range(len(ports))]
    cluster = ",".join(f"{n}=http://127.0.0.1:{peer}" for n, (_, peer) in zip(names, ports,
                                                                               strict=True))
    datastore = [sys.executable, "-m", "datastore"]
    out = []
    for name, (client, peer) in zip(names, ports, strict=True):
        curl, purl = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        data_dir = storage_dir / name
        identity = ["--name", name, "--data-dir", str(data_dir),
                    "--initial-advertise-peer-urls", purl, "--initial-cluster", cluster,
                    "--initial-cluster-token", "datastore-kube"]
        restore = None
        if snapshot is not None:
            tool = datastore if backend == "datastore" else [etcdutl_bin]
            restore = [*tool, "snapshot", "restore", str(snapshot), *identity]
        head = ([*datastore, "serve"] if backend == "datastore"
                else [ETCD34_BIN] if backend == "etcd34" else [etcd_bin])
        out.append(Member(name, [
            *head, *identity,
            "--listen-client-urls", curl, "--advertise-client-urls", curl,
            "--listen-peer-urls", purl, "--initial-cluster-state", "new"],
            curl, data_dir, restore))
    return out
