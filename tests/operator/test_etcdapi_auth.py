"""The operator's ClusterAPI with a user, against real members with auth on: one login
serves every call, and the calls about one cluster never reach another's members."""

from __future__ import annotations

from pathlib import Path

from datastore.client import Client
from datastore.embed import EmbeddedServer
from kvoperator.etcdapi import ClientClusterAPI
from tests.client.conftest import run
from tests.client.test_auth_login import enable_auth


def test_each_cluster_gets_its_own_logged_in_client(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "a", name="a") as a, EmbeddedServer(tmp_path / "b", name="b") as b:
        enable_auth(a.endpoint)
        enable_auth(b.endpoint)

        async def body() -> None:
            parent = ClientClusterAPI(user="root", password="rootpw")
            api_a, api_b = parent.for_cluster(), parent.for_cluster()
            try:
                for _ in range(5):  # an operator's passes: Status and MemberList of each
                    await api_a.status(f"http://{a.endpoint}")
                    await api_b.status(f"http://{b.endpoint}")
                    assert len((await api_a.member_list([f"http://{a.endpoint}"])).members) == 1
                # a membership change for b goes to b's members, whatever a's client did
                await api_b.member_add_learner([f"http://{b.endpoint}"], "http://127.0.0.1:1")
                for ep, want in ((a.endpoint, 1), (b.endpoint, 2)):
                    async with Client([ep], user="root", password="rootpw") as c:
                        assert len((await c.member_list()).members) == want, ep
                assert api_a._shared.pool.logins == api_b._shared.pool.logins == 1
            finally:
                await parent.close()
        run(body())
