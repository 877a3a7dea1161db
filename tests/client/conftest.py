"""Client tests run against a real datastore member from the package's own pytest plugin
(``datastore_server`` / ``datastore_server_session``), loaded through its ``pytest11``
entry point: these tests also prove that entry point works."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one async test body on a fresh loop, bounded so a hang fails instead of stalling."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def until(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0,  # noqa: ASYNC109
                what: str = "condition") -> None:
    """Poll ``cond`` (sync or async) until true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = cond()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # poll interval of the condition above


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own, so tests can share one server."""
    return f"/t-{uuid.uuid4().hex[:8]}/"
