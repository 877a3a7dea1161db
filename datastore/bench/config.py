"""What to run: the benchmark's parameters and endpoint normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WORKLOADS = ("put", "get", "get-serializable", "txn", "watch")


@dataclass
class BenchConfig:
    endpoints: list[str]
    workload: str = "put"
    clients: int = 16
    conns: int = 0  # 0: automatic
    procs: int = 1
    duration: float | None = 10.0
    total: int | None = None
    key_size: int = 32
    val_size: int = 256
    key_space: int = 10000
    prefix: str = "bench/"
    warmup: float = 0.0
    prepopulate: bool = True
    watchers: int = 16
    rate: float = 100.0  # watch: writer puts per second
    timeout: float = 10.0  # per RPC
    seed: int | None = None
    progress: str = "auto"  # auto | tty | lines | none
    progress_interval: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)

    def effective_conns(self) -> int:
        if self.conns > 0:
            return self.conns
        return max(min(self.clients, 8), len(self.endpoints), self.procs)


def normalize_endpoint(ep: str) -> str:
    ep = ep.strip()
    for scheme in ("http://", "https://"):
        if ep.startswith(scheme):
            ep = ep[len(scheme):]
    return ep.rstrip("/")
