"""A bench process's counters, shared by the worker and the workload mixins."""

from __future__ import annotations

from typing import Any

import grpc

from datastore.bench.hist import Histogram


class Stats:
    """Per-process counters; the progress reporter reads ops/errors."""

    def __init__(self) -> None:
        self.hist = Histogram()
        self.ops = 0
        self.errors = 0
        self.error_codes: dict[str, int] = {}
        self.remaining = 0
        self.stop = False
        self.extra: dict[str, Any] = {}

    def error(self, e: BaseException) -> None:
        self.errors += 1
        name = e.code().name if isinstance(e, grpc.aio.AioRpcError) else type(e).__name__
        self.error_codes[name] = self.error_codes.get(name, 0) + 1
