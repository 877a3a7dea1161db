"""The fenced bind against a real datastore member: success, pod conflict, fence."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from datastore.client import Client
from datastore.client.recipes import Election, Session
from kvscheduler import objects as obj
from kvscheduler.scheduler import SCHEDULED_BY, Scheduler


async def _setup(endpoint: str) -> tuple[Client, Scheduler, Session, Election]:
    c = Client([endpoint])
    s = Scheduler(c, identity="t1", lease_ttl=5)
    await c.put(obj.node_key("n1"), obj.encode(obj.make_node("n1")))
    for i in range(3):
        pod = json.loads(obj.encode(obj.make_pod(f"p{i}")))
        pod["spec"]["futureField"] = i  # a newer API server's field, unknown to the models
        await c.put(obj.pod_key("default", f"p{i}"), json.dumps(pod).encode())
    await s.nodes_inf.start()
    await s.pods_inf.start()
    await s.nodes_inf.wait_synced(30)
    await s.pods_inf.wait_synced(30)
    session = await Session(c, ttl=5).open()
    e = Election(session, "/test-election")
    await e.campaign(b"t1")
    s._fence = (bytes(e.key), int(e.rev))
    return c, s, session, e


async def _stop(c: Client, s: Scheduler, session: Session) -> None:
    await s.nodes_inf.stop()
    await s.pods_inf.stop()
    await session.close()
    await c.close()


def _key(i: int) -> str:
    return obj.pod_key("default", f"p{i}")


def test_bind_conflict_and_fence(datastore_server: Any) -> None:
    async def run() -> None:
        c, s, session, e = await _setup(datastore_server.endpoint)
        try:
            # 1. A bind from the current revision applies: nodeName, condition, annotation.
            st = s.cache.pods[_key(0)]
            s.cache.assume(_key(0), "n1")
            await s._bind(_key(0), st, "n1")
            raw = (await c.get(_key(0))).kvs[0].value
            assert json.loads(raw)["spec"]["futureField"] == 0  # the write kept it
            got = obj.decode_pod(raw)
            assert got.spec.node_name == "n1"
            assert obj.pod_condition(got, "PodScheduled").status == "True"
            assert got.metadata.annotations[SCHEDULED_BY] == "t1"
            assert s.stats.binds == 1

            # 2. The pod changed after the decision: no write, re-read, queued again.
            st = s.cache.pods[_key(1)]
            s.cache.assume(_key(1), "n1")
            changed = obj.make_pod("p1", labels={"touched": "yes"})
            rev = (await c.put(_key(1), obj.encode(changed))).header.revision
            await s._bind(_key(1), st, "n1")
            assert s.stats.bind_conflicts == 1
            after = (await c.get(_key(1))).kvs[0]
            assert after.mod_revision == rev and b"nodeName" not in after.value
            assert s.cache.pods[_key(1)].mod_revision == rev  # the re-read is in the cache
            assert s.cache.pods[_key(1)].assumed is None
            assert _key(1) in s.queue.active
            assert s.cache.usage("n1")[1] == 1  # only p0 (bound) is charged

            # 3. Our election key is gone (a paused leader whose lease expired): fenced.
            await e.resign()
            st = s.cache.pods[_key(2)]
            s.cache.assume(_key(2), "n1")
            await s._bind(_key(2), st, "n1")
            assert s.stats.fenced == 1 and s._lost.is_set()
            assert b"nodeName" not in (await c.get(_key(2))).kvs[0].value
            assert s.cache.pods[_key(2)].assumed is None
        finally:
            await _stop(c, s, session)
    asyncio.run(run())
