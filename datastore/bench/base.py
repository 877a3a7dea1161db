"""What the workload mixins (``unary.py``, ``watch.py``) use of ``Worker``, for type
checkers only; at run time ``WorkerBase`` is ``object``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    import grpc

    from datastore.bench.config import BenchConfig
    from datastore.bench.stats import Stats
    from datastore.bench.wire import KeyGen

    class WorkerBase:
        cfg: BenchConfig
        index: int
        clients: int
        watchers: int
        keys: KeyGen
        stats: Stats
        channels: list[grpc.aio.Channel]
        revs: dict[int, int]

        def _calls(self, method: str, decode: Callable[[bytes], Any] | None = None) -> list[Any]: ...

else:
    WorkerBase = object
