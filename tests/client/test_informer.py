"""Informer: the cache follows random writes and deletes, and relists after compaction."""

from __future__ import annotations

import random

from datastore.api.mvccpb.kv_pb2 import KeyValue
from datastore.client import Client
from datastore.client.recipes import Informer
from datastore.embed import EmbeddedServer
from datastore.testing.tcpproxy import TcpProxy
from tests.client.conftest import run, until

PREFIX = "/registry/pods/"


async def random_ops(c: Client, rng: random.Random, n: int) -> None:
    for _ in range(n):
        key = f"{PREFIX}p{rng.randrange(12)}"
        if rng.random() < 0.3:
            await c.delete(key)
        else:
            await c.put(key, str(rng.random()))
    await c.put("/elsewhere/k", "outside the prefix")


def test_informer_cache_equals_fresh_list_after_writes_deletes_and_compaction(
        datastore_server: EmbeddedServer) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    port = int(datastore_server.endpoint.rsplit(":", 1)[1])

    async def body() -> None:
        with TcpProxy(port) as proxy:
            async with Client([datastore_server.endpoint]) as c, \
                    Client([f"127.0.0.1:{proxy.port}"]) as ic:
                await random_ops(c, rng, 20)  # state before the informer starts
                # The handlers rebuild the prefix from the change stream alone.
                model: dict[bytes, bytes] = {}

                def add(kv: KeyValue) -> None:
                    assert kv.key not in model, f"add of a known key {kv.key!r}"
                    model[kv.key] = kv.value

                def update(old: KeyValue, new: KeyValue) -> None:
                    assert model.get(old.key) == old.value and new.mod_revision > old.mod_revision
                    model[new.key] = new.value

                def delete(old: KeyValue) -> None:
                    assert model.pop(old.key) == old.value

                inf = Informer(ic, PREFIX, on_add=add, on_update=update, on_delete=delete)
                await inf.start()
                await inf.wait_synced(20)
                await random_ops(c, rng, 60)
                await until(lambda: _in_sync(c, inf), what="cache caught up")

                # Cut the informer off, change things and compact past its revision.
                proxy.block("reset")
                await random_ops(c, rng, 60)
                rev = (await c.put(PREFIX + "last", "x")).header.revision
                await c.compact(rev)
                proxy.unblock()
                await until(lambda: _in_sync(c, inf), what="cache relisted after compaction")
                assert inf.relists >= 2, "the compacted watch revision must force a relist"
                await inf.stop()
                fresh = await c.get(PREFIX, prefix=True)
                assert inf.cache == {kv.key: kv for kv in fresh.kvs}
                assert model == {kv.key: kv.value for kv in fresh.kvs}

    try:
        run(body())
    except AssertionError as e:
        raise AssertionError(f"{e} (seed {seed})") from e


async def _in_sync(c: Client, inf: Informer) -> bool:
    fresh = await c.get(PREFIX, prefix=True)
    return inf.revision >= fresh.header.revision - 1 and inf.cache == {kv.key: kv for kv in fresh.kvs}


def test_informer_survives_a_failing_handler(datastore_server_session: EmbeddedServer, prefix: str) -> None:
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c:
            added: list[bytes] = []

            def on_add(kv: KeyValue) -> None:
                if kv.key.endswith(b"bad"):
                    raise ValueError("handler bug")
                added.append(kv.key)
            async with Informer(c, prefix, on_add=on_add) as inf:
                await inf.wait_synced(20)
                await c.put(prefix + "bad", "1")
                await c.put(prefix + "good", "2")
                await until(lambda: added == [(prefix + "good").encode()], what="later events handled")
                assert set(inf.cache) == {(prefix + "bad").encode(), (prefix + "good").encode()}
    run(body())
