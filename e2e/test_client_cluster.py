"""datastore.client against real 3-member datastore clusters: failover across a leader
kill, a watch that resumes gapless and duplicate-free across member kills, lease
keep-alive across a leader change, and learners skipped for requests they refuse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
from cluster_util import Cluster, wait_for
from e2e_util import target_is_etcd

from datastore.api.mvccpb.kv_pb2 import Event
from datastore.client import Client
from datastore.client.errors import ClientError
from datastore.testing.procs import ServerProc, etcdctl

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="datastore clusters only")


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("client-cluster")).start()
    yield c
    c.stop()


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Cluster:
    """The module's cluster with every member running again and one agreed leader
    (tests kill members; restarting them is cheaper than a new cluster per test)."""
    for p in shared_cluster.procs:
        if p.popen is None or p.popen.poll() is not None:
            p.start()
    shared_cluster.wait_leader()
    return shared_cluster


def run(coro: Awaitable[None], timeout: float = 120.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)
    asyncio.run(bounded())


async def until(cond: Callable[[], bool], timeout: float = 30.0,  # noqa: ASYNC109
                what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # poll interval of the condition above


def endpoints_starting_with(c: Cluster, first: ServerProc) -> list[str]:
    return [first.endpoint, *(p.endpoint for p in c.procs if p is not first)]


def test_failover_across_leader_kill(cluster: Cluster) -> None:
    """The client starts on the leader; after the leader is SIGKILLed it moves on by
    itself: reads never fail, at most the write in flight fails (ambiguous, so it is not
    retried), and every acknowledged write is there afterwards."""
    leader = cluster.leader()

    async def body() -> None:
        async with Client(endpoints_starting_with(cluster, leader), timeout=10) as c:
            acked: list[str] = []
            failed: list[str] = []
            for i in range(40):
                if i == 10:
                    leader.kill()
                key = f"/fo/{i:03d}"
                try:
                    await c.put(key, str(i))
                    acked.append(key)
                except ClientError as e:
                    failed.append(f"{key}: {e}")
                assert (await c.get("/fo/", prefix=True, count_only=True)).count >= len(acked)
            assert c.pool.current != leader.endpoint
            print(f"acked {len(acked)}, failed {failed}")
            # Only writes in flight around the election may fail (ambiguously, so the client
            # does not resend them); once a leader is back every write goes through.
            assert len(failed) <= 3, failed
            assert all(f"/fo/{i:03d}" in acked for i in range(10)), "writes before the kill"
            assert all(f"/fo/{i:03d}" in acked for i in range(25, 40)), failed
            got = {kv.key.decode() for kv in (await c.get("/fo/", prefix=True)).kvs}
            assert set(acked) <= got
    run(body())


def test_watch_resumes_across_member_kills(cluster: Cluster) -> None:
    """A watcher whose member dies (twice, one of them possibly the leader) re-creates its
    watch on another member from last revision + 1: compared with the full history read
    afterwards, it saw every event exactly once and in order."""
    first = cluster.procs[0]

    async def body() -> None:
        eps = endpoints_starting_with(cluster, first)
        async with Client(eps, timeout=10) as writer_c, Client(eps, timeout=10) as watch_c:
            start = (await writer_c.put("/wr/start", "0")).header.revision
            w = watch_c.watch("/wr/", prefix=True, start_revision=start + 1)
            await w.wait_created()
            got: list[Event] = []
            stop = asyncio.Event()

            async def consume() -> None:
                async for b in w:
                    got.extend(b.events)

            async def write() -> None:
                i = 0
                while not stop.is_set():
                    try:
                        if i % 7 == 6:
                            await writer_c.delete(f"/wr/{i % 5}")
                        else:
                            await writer_c.put(f"/wr/{i % 5}", str(i))
                    except ClientError:
                        pass  # an ambiguous write during a kill: the history decides
                    i += 1
            consumer = asyncio.create_task(consume())
            writer = asyncio.create_task(write())
            for _ in range(2):
                victim = next(p for p in cluster.procs if p.endpoint == watch_c.pool.current)
                n = len(got)
                await until(lambda n=n: len(got) >= n + 20, what="events before the kill")
                victim.kill()
                await asyncio.to_thread(cluster.wait_leader, [p for p in cluster.procs if p is not victim])
                n = len(got)
                await until(lambda n=n: len(got) >= n + 20, what="events after the kill")
                await asyncio.to_thread(victim.start)
            stop.set()
            await writer
            end = (await writer_c.put("/wr/end", "x")).header.revision
            await until(lambda: bool(got) and got[-1].kv.mod_revision >= end, what="watch caught up")
            await w.cancel()
            await consumer
            print(f"resumes {w.resumes}, events {len(got)}")
            assert w.resumes >= 2
            # the full history from a fresh watch on a member that stayed up
            history: list[Event] = []
            async with writer_c.watch("/wr/", prefix=True, start_revision=start + 1) as h:
                async for b in h:
                    history.extend(b.events)
                    if history[-1].kv.mod_revision >= end:
                        break

            def ident(e: Event) -> tuple[int, bytes, int, bytes]:
                return (e.kv.mod_revision, e.kv.key, e.type, e.kv.value)
            assert [ident(e) for e in got] == [ident(e) for e in history]
    run(body())


def test_keep_alive_across_leader_change(cluster: Cluster) -> None:
    """A lease with a short TTL stays alive while its leader is killed and a new one is
    elected; its key survives, and the owner is never told the lease was lost."""
    leader = cluster.leader()

    async def body() -> None:
        async with Client(endpoints_starting_with(cluster, leader), timeout=10) as c:
            lease = (await c.lease_grant(2)).ID
            await c.put("/ka/k", "v", lease=lease)
            ka = c.keep_alive(lease)
            await until(lambda: ka.renewals >= 2, what="renewals before the kill")
            leader.kill()
            await asyncio.to_thread(cluster.wait_leader, [p for p in cluster.procs if p is not leader])
            killed_at = time.monotonic()
            before = ka.renewals
            # well past the TTL with renewals going to the new leader
            await until(lambda: ka.renewals >= before + 3 and time.monotonic() - killed_at > 3,
                        what="renewals after the leader change")
            assert not ka.lost.is_set()
            assert (await c.lease_time_to_live(lease)).TTL > 0
            assert (await c.get("/ka/k")).kvs
            await ka.stop()
    run(body())


def test_learner_is_skipped_for_requests_it_refuses(cluster: Cluster) -> None:
    """A client whose first endpoint is a learner still reads and writes: the learner's
    refusal (rejected before execution) moves it to a voting member."""
    new = cluster.new_member("m3")
    out = etcdctl(cluster.procs[0].endpoint, "member", "add", "m3", f"--peer-urls={new.peer_url}",
                  "--learner").stdout.decode()
    learner_id = out.split("Member ", 1)[1].split()[0]
    new.start()
    wait_for(lambda: etcdctl(new.endpoint, "endpoint", "status", check=False).returncode == 0, 30,
             "learner serving Status")

    async def body() -> None:
        async with Client([new.endpoint, cluster.procs[0].endpoint], timeout=10) as c:
            await c.put("/learner/k", "v")  # refused by the learner, retried on a voter
            assert c.pool.current == cluster.procs[0].endpoint
            assert c.pool.learners == {new.endpoint}
            assert (await c.get("/learner/k")).kvs[0].value == b"v"
            st = await c.status(new.endpoint)  # Status is allowed on a learner
            assert st.isLearner
    try:
        run(body())
    finally:  # leave the shared cluster with its three voters
        etcdctl(cluster.procs[0].endpoint, "member", "remove", learner_id, check=False)
        new.stop()
