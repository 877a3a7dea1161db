"""A blocking facade over the asyncio Client, for scripts and threaded code.

The async Client runs on an event loop in a daemon thread owned by this object; each
method submits the coroutine there and waits for its result. Methods and arguments are
the async Client's (``sc.put("k", "v")``, ``sc.get("k", prefix=True)``...); ``watch()``
returns a plain iterator and ``keep_alive()`` a handle whose ``lost`` is a threading.Event.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from datastore.client.client import Client
from datastore.client.connection import TLSConfig
from datastore.client.keepalive import KeepAlive
from datastore.client.requests import KeyLike
from datastore.client.watch import Watch, WatchBatch

T = TypeVar("T")


class SyncClient:
    """Same methods as ``Client``, blocking. Close it (or use ``with``) to stop its thread."""

    def __init__(self, endpoints: Sequence[str] | str, timeout: float = 5.0,
                 tls: TLSConfig | None = None, user: str | None = None,
                 password: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="datastore-client",
                                        daemon=True)
        self._thread.start()

        async def make() -> Client:
            return Client(endpoints, timeout=timeout, tls=tls, user=user, password=password)
        self.aio: Client = self.run(make())

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run a coroutine on the client's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.aio, name)
        if inspect.iscoroutinefunction(attr):
            def blocking(*args: Any, **kwargs: Any) -> Any:
                return self.run(attr(*args, **kwargs))
            blocking.__name__ = name
            blocking.__doc__ = attr.__doc__
            return blocking
        return attr

    def watch(self, key: KeyLike, **kwargs: Any) -> SyncWatch:
        """Like Client.watch; iterate it in a plain for loop, ``cancel()`` to end."""
        async def make() -> Watch:
            return self.aio.watch(key, **kwargs)
        return SyncWatch(self, self.run(make()))

    def keep_alive(self, lease_id: int, on_lost: Callable[[int], object] | None = None) -> SyncKeepAlive:
        """Like Client.keep_alive; ``on_lost`` runs on the client's thread."""
        async def make() -> KeepAlive:
            return self.aio.keep_alive(lease_id, on_lost)
        return SyncKeepAlive(self, self.run(make()))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self.aio.close())

        async def cancel_rest() -> None:
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncWatch(Iterator[WatchBatch]):
    def __init__(self, owner: SyncClient, watch: Watch) -> None:
        self.owner, self.aio = owner, watch

    def __iter__(self) -> SyncWatch:
        return self

    def __next__(self) -> WatchBatch:
        try:
            return self.owner.run(self.aio.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def next(self, timeout: float | None = None) -> WatchBatch:
        """The next batch, waiting at most ``timeout`` seconds (TimeoutError otherwise)."""
        return self.owner.run(asyncio.wait_for(self.aio.__anext__(), timeout))

    def wait_created(self, timeout: float = 30.0) -> None:
        self.owner.run(self.aio.wait_created(timeout))

    def cancel(self) -> None:
        self.owner.run(self.aio.cancel())

    def events(self) -> Iterable[Any]:
        """Iterate single events instead of batches."""
        for batch in self:
            yield from batch.events


class SyncKeepAlive:
    def __init__(self, owner: SyncClient, ka: KeepAlive) -> None:
        self.owner, self.aio = owner, ka
        self.lost = threading.Event()
        self.lease_id = ka.lease_id

        async def mirror() -> None:
            await ka.lost.wait()
            self.lost.set()
        self._mirror = owner.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(mirror()))

    def stop(self) -> None:
        self.owner.run(self.aio.stop())
