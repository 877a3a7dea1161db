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


def members(backend: str, storage_dir: Path, ports: list[tuple[int, int]],
            etcd_bin: str = "etcd", kine_bin: str = "kine") -> list[Member]:
    """One Member per (client port, peer port); kine is a single process."""
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
    out = []
    for name, (client, peer) in zip(names, ports, strict=True):
        curl, purl = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        head = ([sys.executable, "-m", "datastore", "serve"] if backend == "datastore"
                else [ETCD34_BIN] if backend == "etcd34" else [etcd_bin])
        out.append(Member(name, [
            *head, "--name", name, "--data-dir", str(storage_dir / name),
            "--listen-client-urls", curl, "--advertise-client-urls", curl,
            "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "datastore-kube"], curl))
    return out
