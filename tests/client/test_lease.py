"""Lease keep-alive: renewal past the TTL, loss on revoke, survival of a broken connection."""

from __future__ import annotations

import asyncio
import time

from datastore.client import Client
from datastore.embed import EmbeddedServer
from datastore.testing.tcpproxy import TcpProxy
from tests.client.conftest import run, until


def test_keep_alive_renews_past_ttl_and_reports_revoke(datastore_server_session: EmbeddedServer) -> None:
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c:
            lease = (await c.lease_grant(2)).ID
            await c.put("/ka/k", "v", lease=lease)
            lost: list[int] = []
            ka = c.keep_alive(lease, on_lost=lost.append)
            t0 = time.monotonic()
            await until(lambda: ka.renewals >= 5 and time.monotonic() - t0 > 3, what="renewals past the TTL")
            assert (await c.get("/ka/k")).kvs, "a kept-alive lease must not expire"
            assert not ka.lost.is_set()
            await c.lease_revoke(lease)
            await asyncio.wait_for(ka.lost.wait(), 20)
            assert lost == [lease]
            assert not ka.running
    run(body())


def test_keep_alive_survives_a_broken_connection(datastore_server: EmbeddedServer) -> None:
    port = int(datastore_server.endpoint.rsplit(":", 1)[1])

    async def body() -> None:
        with TcpProxy(port) as proxy:
            async with Client([f"127.0.0.1:{proxy.port}"]) as c, \
                    Client([datastore_server.endpoint]) as direct:
                lease = (await c.lease_grant(3)).ID
                ka = c.keep_alive(lease)
                await until(lambda: ka.renewals >= 1, what="first renewal")
                proxy.block("reset")
                before = ka.renewals
                proxy.unblock()
                await until(lambda: ka.renewals >= before + 3, what="renewals after the cut")
                assert (await direct.lease_time_to_live(lease)).TTL > 0
                assert not ka.lost.is_set()
                await ka.stop()
    run(body())


def test_keep_alive_reports_expiry_when_unreachable(datastore_server: EmbeddedServer) -> None:
    """Cut off longer than the TTL: the lease expires on the server and the owner is told."""
    port = int(datastore_server.endpoint.rsplit(":", 1)[1])

    async def body() -> None:
        with TcpProxy(port) as proxy:
            async with Client([f"127.0.0.1:{proxy.port}"]) as c, \
                    Client([datastore_server.endpoint]) as direct:
                lease = (await c.lease_grant(2)).ID
                ka = c.keep_alive(lease)
                await until(lambda: ka.renewals >= 1, what="first renewal")
                proxy.block("reset")
                await asyncio.wait_for(ka.lost.wait(), 20)
                proxy.unblock()
                await until(lambda: _expired(direct, lease), what="server-side expiry")
    run(body())


async def _expired(c: Client, lease: int) -> bool:
    return (await c.lease_time_to_live(lease)).TTL == -1
