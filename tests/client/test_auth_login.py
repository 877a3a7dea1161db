"""A client that logs in: the token goes with every request and stream, and a refused
token (stale after an auth change, or lost in a restart) means one new login and the
request sent again, never an error for the caller; a wrong password is an error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.client import Client
from datastore.client.errors import ClientError
from datastore.embed import EmbeddedServer
from tests.client.conftest import run, until


def enable_auth(ep: str) -> None:
    with grpc.insecure_channel(ep) as ch:
        a = rpc_pb2_grpc.AuthStub(ch)
        a.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=10)
        a.UserAdd(rpc.AuthUserAddRequest(name="root", password="rootpw"), timeout=10)
        a.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
        a.AuthEnable(rpc.AuthEnableRequest(), timeout=10)


async def add_user(c: Client, name: str) -> None:
    """An auth change (raises the auth revision: every earlier token is stale)."""
    await rpc_pb2_grpc.AuthStub(c.pool.channel()).UserAdd(
        rpc.AuthUserAddRequest(name=name, password="pw"), metadata=await c.pool.metadata(),
        timeout=10)


@pytest.fixture
def jwt_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A member issuing JWT tokens, which carry the auth revision they were issued at."""
    secret = tmp_path / "jwt-secret"
    secret.write_bytes(b"a shared secret for HS256 tokens")
    with EmbeddedServer(tmp_path / "jwt", extra_flags=[
            "--auth-token", f"jwt,sign-method=HS256,priv-key={secret}"]) as srv:
        yield srv


def test_a_stale_token_means_one_new_login(jwt_server: EmbeddedServer) -> None:
    """After an auth change a JWT token is stale ("revision of auth store is old"): the
    request, the watch and the keep-alive stream go on after one new login each time."""
    ep = jwt_server.endpoint
    enable_auth(ep)

    async def body() -> None:
        async with Client([ep], user="root", password="rootpw") as c:
            await c.put("a", "1")
            assert (await c.get("a")).kvs[0].value == b"1"
            lease = (await c.lease_grant(30)).ID
            ka = c.keep_alive(lease)
            await until(lambda: ka.renewals >= 1, what="a renewal with the token")
            assert c.pool.logins == 1

            await add_user(c, "bob")
            await c.put("a", "2")
            assert c.pool.logins == 2

            await add_user(c, "carol")
            w = c.watch("a")
            await w.wait_created()
            assert c.pool.logins == 3
            await c.put("a", "3")
            batch = await w.__anext__()
            assert [e.kv.value for e in batch.events] == [b"3"]
            await w.cancel()
            await ka.stop()

    run(body())


def test_a_restart_forgets_simple_tokens_and_the_client_logs_in_again(
        datastore_server: EmbeddedServer) -> None:
    ep = datastore_server.endpoint
    enable_auth(ep)

    async def body() -> None:
        async with Client([ep], user="root", password="rootpw", timeout=30) as c:
            await c.put("b", "1")
            assert c.pool.logins == 1
            datastore_server.restart()  # simple tokens live in memory: "invalid auth token"
            await c.put("b", "2")
            assert c.pool.logins == 2
            assert (await c.get("b")).kvs[0].value == b"2"

    run(body())


def test_a_wrong_password_is_an_error(datastore_server: EmbeddedServer) -> None:
    ep = datastore_server.endpoint
    enable_auth(ep)

    async def body() -> None:
        async with Client([ep], user="root", password="wrong") as c:
            with pytest.raises(ClientError, match="authentication failed"):
                await c.put("a", "1")
        async with Client([ep]) as anonymous:  # no token at all: etcd's refusal, unchanged
            with pytest.raises(ClientError, match="user name is empty"):
                await anonymous.put("a", "1")

    run(body())
    with pytest.raises(ValueError, match="both user and password"):
        Client([ep], user="root")
