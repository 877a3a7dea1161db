"""Mutex and Election interoperate with Go's clientv3/concurrency through the real
``etcdctl lock`` / ``etcdctl elect`` (etcd 3.4), on datastore and on real etcd alike."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable

import pytest
from e2e_util import ServerFactory

from datastore.client import Client
from datastore.client.errors import LockTimeoutError
from datastore.client.recipes import Election, Mutex, Session
from datastore.testing.procs import ETCDCTL_BIN

KINDS = ["datastore", "etcd"]


def run(coro: Awaitable[None], timeout: float = 90.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)
    asyncio.run(bounded())


class Ctl:
    """A long-running etcdctl (lock / elect) whose output lines we read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, endpoint: str, *args: str) -> Ctl:
        p = await asyncio.create_subprocess_exec(
            ETCDCTL_BIN, f"--endpoints={endpoint}", *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "ETCDCTL_API": "3"})
        return cls(p)

    async def line(self, timeout: float = 20.0) -> bytes:  # noqa: ASYNC109
        assert self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not out:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            raise AssertionError(f"etcdctl exited ({self.proc.returncode}): {err!r}")
        return out.rstrip(b"\n")

    async def silent_for(self, seconds: float) -> bool:
        """True if etcdctl printed nothing for ``seconds`` (it is still waiting)."""
        try:
            await self.line(seconds)
        except TimeoutError:
            return True
        return False

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)  # etcdctl releases (unlock / resign) on SIGINT
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def keys(c: Client, prefix: str) -> list[bytes]:
    resp = await c.get(prefix, prefix=True, sort_order="ascend", sort_target="create")
    return [kv.key for kv in resp.kvs]


async def wait_keys(c: Client, prefix: str, n: int, timeout: float = 20.0) -> list[bytes]:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(ks := await keys(c, prefix)) != n:
        if loop.time() > deadline:
            raise AssertionError(f"expected {n} keys under {prefix}, have {ks}")
        await asyncio.sleep(0.05)  # poll interval of the condition above
    return ks


@pytest.mark.parametrize("kind", KINDS)
def test_mutex_and_etcdctl_lock_exclude_each_other(server_factory: ServerFactory, kind: str) -> None:
    srv = server_factory(kind)

    async def body() -> None:
        async with Client([srv.endpoint]) as c, Session(c, ttl=10) as s:
            m = Mutex(s, "/lk")
            # 1. Python holds; etcdctl queues behind it and gets the lock only on unlock.
            await m.lock()
            ctl = await Ctl.start(srv.endpoint, "lock", "/lk")
            try:
                ks = await wait_keys(c, "/lk/", 2)
                assert ks[0] == m.key == f"/lk/{s.lease_id:x}".encode()
                assert await ctl.silent_for(1.0), "etcdctl took a lock the Python holder has"
                await m.unlock()
                assert await ctl.line() == ks[1], "etcdctl should hold the lock after unlock"
                # 2. etcdctl holds; Python waits and gets it only once etcdctl releases.
                with pytest.raises(LockTimeoutError):
                    await m.lock(timeout=1.0)
                assert await keys(c, "/lk/") == [ks[1]], "a timed-out waiter must leave no key"
                waiter = asyncio.create_task(m.lock(timeout=30))
                await wait_keys(c, "/lk/", 2)
                assert not waiter.done()
                await ctl.stop()
                await waiter
                assert await keys(c, "/lk/") == [m.key]
                await m.unlock()
            finally:
                await ctl.stop()
    run(body())


@pytest.mark.parametrize("kind", KINDS)
def test_election_interoperates_with_etcdctl_elect(server_factory: ServerFactory, kind: str) -> None:
    srv = server_factory(kind)

    async def body() -> None:
        async with Client([srv.endpoint]) as c, Session(c, ttl=10) as s1, Session(c, ttl=10) as s2:
            e1 = Election(s1, "/el")
            await e1.campaign("py-1")
            observer = await Ctl.start(srv.endpoint, "elect", "-l", "/el")
            candidate: Ctl | None = None
            try:
                # etcdctl elect -l sees the Python leader and its proclamations
                assert await observer.line() == e1.key
                assert await observer.line() == b"py-1"
                await e1.proclaim("py-2")
                assert await observer.line() == e1.key
                assert await observer.line() == b"py-2"
                # an etcdctl candidate queues, and takes over when Python resigns
                candidate = await Ctl.start(srv.endpoint, "elect", "/el", "ctl-cand")
                ks = await wait_keys(c, "/el/", 2)
                assert await candidate.silent_for(1.0), "etcdctl elected while Python leads"
                await e1.resign()
                assert await candidate.line() == ks[1]
                assert await candidate.line() == b"ctl-cand"
                assert (await e1.leader()).value == b"ctl-cand"
                assert await observer.line() == ks[1]
                assert await observer.line() == b"ctl-cand"
                # Python observes etcdctl's leadership and waits for its turn
                obs = Election(s2, "/el").observe()
                assert (await anext(obs)).value == b"ctl-cand"
                e2 = Election(s2, "/el")
                with pytest.raises(LockTimeoutError):
                    await e2.campaign("py-3", timeout=1.0)
                won = asyncio.create_task(e2.campaign("py-3", timeout=30))
                await wait_keys(c, "/el/", 2)
                await candidate.stop()
                await won
                assert (await anext(obs)).value == b"py-3"
                await obs.aclose()
                assert await observer.line() == e2.key
                assert await observer.line() == b"py-3"
            finally:
                for p in (observer, candidate):
                    if p is not None:
                        await p.stop()
    run(body())
