"""Session, Mutex, Election, STM and ServiceRegistry against a real member."""

from __future__ import annotations

import asyncio

import pytest

from datastore.client import Client
from datastore.client.errors import ElectionNotLeaderError, LockTimeoutError, NoLeaderError
from datastore.client.recipes import (
    Election,
    LockedError,
    Mutex,
    ServiceRegistry,
    Session,
    STMConflictError,
    run_stm,
)
from datastore.client.recipes.stm import STM
from datastore.client.txn import op_put
from datastore.embed import EmbeddedServer
from tests.client.conftest import run, until


def test_mutex_excludes_and_queues_in_order(datastore_server_session: EmbeddedServer, prefix: str) -> None:
    """Five sessions increment a plain (non-atomic) counter under the lock: no lost update,
    and the lock key layout is clientv3's ``<name>/<lease hex>``."""
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c:
            holders: list[int] = []
            inside = 0

            async def worker(i: int) -> None:
                nonlocal inside
                async with Session(c, ttl=10) as s:
                    for _ in range(3):
                        async with Mutex(s, prefix + "lock") as m:
                            assert m.key == f"{prefix}lock/{s.lease_id:x}".encode()
                            inside += 1
                            assert inside == 1, "two holders at once"
                            got = (await c.get(prefix + "n")).kvs
                            await c.put(prefix + "n", str(int(got[0].value) + 1 if got else 1))
                            holders.append(i)
                            inside -= 1
            await asyncio.gather(*(worker(i) for i in range(5)))
            assert int((await c.get(prefix + "n")).kvs[0].value) == 15
            assert sorted(holders) == sorted(list(range(5)) * 3)
            assert not (await c.get(prefix + "lock/", prefix=True)).kvs  # all released
    run(body())


def test_mutex_try_lock_timeout_and_session_loss(datastore_server_session: EmbeddedServer,
                                                 prefix: str) -> None:
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c, \
                Session(c, ttl=10) as s1, Session(c, ttl=10) as s2:
            m1, m2 = Mutex(s1, prefix + "l"), Mutex(s2, prefix + "l")
            await m1.try_lock()
            with pytest.raises(LockedError):
                await m2.try_lock()
            with pytest.raises(LockTimeoutError):
                await m2.lock(timeout=0.5)
            # a waiter that gave up leaves no key behind
            assert [kv.key for kv in (await c.get(prefix + "l/", prefix=True)).kvs] == [m1.key]
            assert (await c.txn([m1.is_owner()])).succeeded
            # the holder's session dies: its key goes with the lease, the waiter gets the lock
            waiter = asyncio.create_task(m2.lock(timeout=20))
            await until(lambda: _has_keys(c, prefix + "l/", 2), what="waiter queued")
            await s1.close()
            assert not (await c.txn([m1.is_owner()])).succeeded
            await waiter
            assert (await c.txn([m2.is_owner()])).succeeded
            await m2.unlock()
    run(body())


async def _has_keys(c: Client, pfx: str, n: int) -> bool:
    return len((await c.get(pfx, prefix=True)).kvs) == n


def test_election_campaign_proclaim_observe_resign(datastore_server_session: EmbeddedServer,
                                                   prefix: str) -> None:
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c, \
                Session(c, ttl=10) as s1, Session(c, ttl=10) as s2:
            name = prefix + "el"
            e1, e2 = Election(s1, name), Election(s2, name)
            with pytest.raises(NoLeaderError):
                await e1.leader()
            with pytest.raises(ElectionNotLeaderError):
                await e1.proclaim("x")
            observed: list[bytes] = []

            async def observe() -> None:
                async for kv in Election(s2, name).observe():
                    observed.append(kv.value)
            obs = asyncio.create_task(observe())
            await e1.campaign("one")
            assert e1.key == f"{name}/{s1.lease_id:x}".encode()
            assert (await e1.leader()).value == b"one"
            await until(lambda: observed[-1:] == [b"one"], what="observer sees one")
            await e1.proclaim("two")
            await until(lambda: observed[-1:] == [b"two"], what="observer sees two")
            # fencing: the leader's guard holds only while it leads
            fence = e1.is_leader_cmp()
            assert (await c.txn([fence], [op_put(prefix + "data", "by-e1")])).succeeded
            second = asyncio.create_task(e2.campaign("three"))
            await until(lambda: _has_keys(c, name + "/", 2), what="e2 queued")
            assert not second.done()
            await e1.resign()
            await asyncio.wait_for(second, 20)
            await until(lambda: observed[-1:] == [b"three"], what="observer sees three")
            assert not (await c.txn([fence], [op_put(prefix + "data", "stale")])).succeeded
            assert (await e2.leader()).key == e2.key
            obs.cancel()
            # a resumed election (same session, known key and rev) acts as the leader
            resumed = Election.resume(s2, name, e2.key, e2.rev)
            await resumed.proclaim("four")
            assert (await e1.leader()).value == b"four"
            await resumed.resign()
            with pytest.raises(NoLeaderError):
                await e1.leader()
    run(body())


def test_stm_serializes_concurrent_increments(datastore_server_session: EmbeddedServer, prefix: str) -> None:
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c:
            await c.put(prefix + "a", "100")

            async def transfer(stm: STM) -> None:
                a = int(await stm.get(prefix + "a") or b"0")
                b = int(await stm.get(prefix + "b") or b"0")
                stm.put(prefix + "a", str(a - 1))
                stm.put(prefix + "b", str(b + 1))
            await asyncio.gather(*(run_stm(c, transfer) for _ in range(10)))
            a = int((await c.get(prefix + "a")).kvs[0].value)
            b = int((await c.get(prefix + "b")).kvs[0].value)
            assert (a, b) == (90, 10)

            async def abort(stm: STM) -> None:
                stm.put(prefix + "a", "0")
                raise RuntimeError("abort")
            with pytest.raises(RuntimeError):
                await run_stm(c, abort)
            assert (await c.get(prefix + "a")).kvs[0].value == b"90"

            async def always_conflicts(stm: STM) -> None:
                await stm.get(prefix + "a")
                await c.put(prefix + "a", "changed")  # someone else writes what we read
                stm.put(prefix + "b", "x")
            with pytest.raises(STMConflictError):
                await run_stm(c, always_conflicts, max_attempts=3)
    run(body())


def test_service_registry(datastore_server_session: EmbeddedServer, prefix: str) -> None:
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c:
            reg = ServiceRegistry(c, prefix + "services")
            seen: list[dict[str, bytes]] = []

            async def watch() -> None:
                async for live in reg.watch("web"):
                    seen.append(live)
            task = asyncio.create_task(watch())
            await until(lambda: seen == [{}], what="initial empty live set")
            r1 = await reg.register("web", "i1", "10.0.0.1:80", ttl=5)
            r2 = await reg.register("web", "i2", "10.0.0.2:80", ttl=2)
            assert await reg.discover("web") == {"i1": b"10.0.0.1:80", "i2": b"10.0.0.2:80"}
            await until(lambda: seen[-1] == {"i1": b"10.0.0.1:80", "i2": b"10.0.0.2:80"}, what="both live")
            await r1.deregister()
            await until(lambda: seen[-1] == {"i2": b"10.0.0.2:80"}, what="i1 gone")
            # a crashed instance (no more keep-alive) disappears after its TTL
            await r2.keepalive.stop()
            await until(lambda: seen[-1] == {}, what="i2 expired")
            task.cancel()
    run(body())


def test_crashed_leader_is_replaced_after_its_ttl_and_fenced(datastore_server_session: EmbeddedServer,
                                                             prefix: str) -> None:
    """The leader stops renewing (as if it crashed): once its lease expires the waiting
    candidate is elected, and the old leader's fenced writes fail."""
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c, Session(c, ttl=10) as s2:
            s1 = await Session(c, ttl=2).open()
            old, new = Election(s1, prefix + "el"), Election(s2, prefix + "el")
            await old.campaign("old")
            fence = old.is_leader_cmp()
            waiting = asyncio.create_task(new.campaign("new", timeout=30))
            await until(lambda: _has_keys(c, prefix + "el/", 2), what="candidate queued")
            await s1.orphan()  # no more keep-alive: the lease runs out after its TTL
            await waiting
            assert (await new.leader()).value == b"new"
            assert not (await c.txn([fence], [op_put(prefix + "state", "stale")])).succeeded
            assert (await c.txn([new.is_leader_cmp()], [op_put(prefix + "state", "fresh")])).succeeded
            await new.resign()
    run(body())
