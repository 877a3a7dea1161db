"""The resumable Watch against a real member, including a broken connection and a restart."""

from __future__ import annotations

import asyncio

import pytest

from datastore.api.mvccpb.kv_pb2 import Event
from datastore.client import Client, Watch
from datastore.client.errors import CompactedError
from datastore.embed import EmbeddedServer
from datastore.testing.tcpproxy import TcpProxy
from tests.client.conftest import run, until


async def collect(w: Watch, n: int) -> list[Event]:
    out: list[Event] = []
    async for batch in w:
        out.extend(batch.events)
        if len(out) >= n:
            return out
    return out


def test_watch_from_now_history_and_filters(datastore_server_session: EmbeddedServer, prefix: str) -> None:
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c:
            start = (await c.put(prefix + "a", "0")).header.revision
            w = c.watch(prefix, prefix=True, prev_kv=True)
            await w.wait_created()
            await c.put(prefix + "a", "1")
            await c.delete(prefix + "a")
            evs = await collect(w, 2)
            assert [e.type for e in evs] == [Event.PUT, Event.DELETE]
            assert evs[0].prev_kv.value == b"0" and evs[1].prev_kv.value == b"1"
            await w.cancel()
            assert [b async for b in w] == []  # a cancelled watch ends
            # history from a past revision, with a NOPUT filter
            async with c.watch(prefix + "a", start_revision=start, filters=["noput"]) as h:
                evs = await collect(h, 1)
            assert [e.type for e in evs] == [Event.DELETE]
    run(body())


def test_compacted_start_revision_raises(datastore_server: EmbeddedServer) -> None:
    async def body() -> None:
        async with Client([datastore_server.endpoint]) as c:
            first = (await c.put("k", "1")).header.revision
            last = (await c.put("k", "2")).header.revision
            await c.compact(last)
            w = c.watch("k", start_revision=first)
            with pytest.raises(CompactedError) as ei:
                await collect(w, 1)
            assert ei.value.compact_revision == last
            await w.cancel()
    run(body())


def test_watch_resumes_across_broken_connection_without_gaps_or_duplicates(
        datastore_server: EmbeddedServer) -> None:
    """Writes happen while the watch's connection is cut; after it heals the watch
    re-creates itself from last revision + 1: every event once, in order."""
    port = int(datastore_server.endpoint.rsplit(":", 1)[1])

    async def body() -> None:
        with TcpProxy(port) as proxy:
            async with Client([datastore_server.endpoint]) as writer, \
                    Client([f"127.0.0.1:{proxy.port}"]) as watcher:
                w = watcher.watch("/w/", prefix=True)
                await w.wait_created()
                got: list[Event] = []

                async def consume() -> None:
                    async for b in w:
                        got.extend(b.events)
                task = asyncio.create_task(consume())
                for i in range(10):
                    await writer.put(f"/w/{i % 3}", str(i))
                await until(lambda: len(got) == 10, what="first 10 events")
                proxy.block("reset")
                for i in range(10, 30):
                    await writer.put(f"/w/{i % 3}", str(i))
                proxy.unblock()
                for i in range(30, 40):
                    await writer.put(f"/w/{i % 3}", str(i))
                await until(lambda: len(got) >= 40, what="all 40 events")
                await w.cancel()
                await task
                assert [e.kv.value for e in got] == [str(i).encode() for i in range(40)]
                revs = [e.kv.mod_revision for e in got]
                assert revs == sorted(set(revs))
                assert w.resumes >= 1
    run(body())


def test_watch_resumes_across_member_restart(datastore_server: EmbeddedServer) -> None:
    async def body() -> None:
        async with Client([datastore_server.endpoint]) as c:
            w = c.watch("/r/", prefix=True)
            await w.wait_created()
            for i in range(5):
                await c.put(f"/r/{i}", str(i))
            datastore_server.kill()
            await asyncio.to_thread(datastore_server.restart)
            for i in range(5, 10):
                await c.put(f"/r/{i}", str(i))
            evs = await collect(w, 10)
            await w.cancel()
            assert [e.kv.value for e in evs] == [str(i).encode() for i in range(10)]
            assert (await c.get("/r/0")).kvs[0].value == b"0", "data kept across the restart"
    run(body())


def test_progress_notifications_advance_the_resume_revision() -> None:
    """With progress_notify, quiet periods yield empty progress batches, and the watch's
    resume point follows them (so a later resume does not start from far behind)."""
    with EmbeddedServer(extra_flags=["--experimental-watch-progress-notify-interval", "200ms"]) as srv:
        async def body() -> None:
            async with Client([srv.endpoint]) as c:
                w = c.watch("/quiet/", prefix=True, progress_notify=True)
                await w.wait_created()
                before = w.next_rev
                for i in range(3):
                    await c.put(f"/elsewhere/{i}", "x")  # revisions move, our keys do not
                rev = (await c.get("/elsewhere/0")).header.revision
                async for batch in w:
                    if batch.progress and batch.revision >= rev:
                        assert not batch.events
                        break
                assert w.next_rev == rev + 1 > before
                await w.cancel()
        run(body())


def test_requested_progress(datastore_server_session: EmbeddedServer, prefix: str) -> None:
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c, c.watch(prefix + "quiet") as w:
            await w.wait_created()
            rev = (await c.put(prefix + "other", "x")).header.revision
            assert await w.request_progress()
            batch = await anext(w)
            assert batch.progress and not batch.events and batch.revision >= rev
            assert w.next_rev == batch.revision + 1
    run(body())
