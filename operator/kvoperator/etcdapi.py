"""The few Cluster/Maintenance calls the operator makes, over the project's client.

An edge adapter: everything else in the operator sees only these methods, so tests of
the Kubernetes side can stand in for them and the reconciler never touches gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from datastore.api.etcdserverpb import rpc_pb2 as rpc

NOT_IN_SYNC = "can only promote a learner member which is in sync with leader"
# The operator's user when the members have auth on (``--user`` and its default).
USER_ENV, PASSWORD_ENV = "KVOPERATOR_USER", "KVOPERATOR_PASSWORD"


class ClusterAPIError(Exception):
    """A call failed; ``details`` is the server's message (etcd's error strings)."""

    def __init__(self, endpoint: str, details: str) -> None:
        super().__init__(f"{endpoint}: {details}")
        self.endpoint = endpoint
        self.details = details


class ClusterAPI(Protocol):
    async def status(self, endpoint: str) -> rpc.StatusResponse: ...
    async def member_list(self, endpoints: Sequence[str]) -> rpc.MemberListResponse: ...
    async def member_add_learner(self, endpoints: Sequence[str], peer_url: str) -> rpc.Member: ...
    async def member_promote(self, endpoints: Sequence[str], member_id: int) -> None: ...
    async def member_remove(self, endpoints: Sequence[str], member_id: int) -> None: ...
    async def move_leader(self, leader: str, target_id: int) -> None: ...


def host_port(url: str) -> str:
    """'http://127.0.0.1:2379' -> '127.0.0.1:2379' (the client's endpoint form)."""
    return url.split("://", 1)[-1].rstrip("/")


class ClientClusterAPI:
    """ClusterAPI over ``datastore.client.Client``.

    Without a user, one short-lived client per call. With one (the members have auth on),
    one client over every endpoint seen so far, kept: it logs in once (a login is a bcrypt
    check and a raft entry on the members) at any voter, and its token is good on every
    member, learners included, which cannot take a login themselves. Calls about one
    member are sent to that member only."""

    def __init__(self, timeout: float = 3.0, tls: object | None = None,
                 user: str | None = None, password: str | None = None) -> None:
        self.timeout = timeout
        self.tls = tls
        self.user, self.password = user, password
        self._shared: Any = None  # with a user: the client, over every endpoint seen
        self._children: list[ClientClusterAPI] = []

    def for_cluster(self) -> ClientClusterAPI:
        """The same settings, for the calls about one cluster (the Kubernetes operator has
        one per DatastoreCluster): a client that logs in must never fail over from one
        cluster's members to another's."""
        child = ClientClusterAPI(self.timeout, self.tls, self.user, self.password)
        self._children.append(child)
        return child

    def _client(self, eps: list[str]) -> Any:
        from datastore.client import Client

        return Client(eps, timeout=self.timeout, tls=self.tls,  # type: ignore[arg-type]
                      user=self.user, password=self.password)

    def _shared_client(self, eps: list[str]) -> Any:
        if self._shared is None:
            self._shared = self._client(eps)
        else:
            self._shared.add_endpoints(eps)
        return self._shared

    async def _call(self, endpoints: Sequence[str], method: str, *args: object,
                    **kwargs: object) -> object:
        from datastore.client.errors import ClientError

        eps = [host_port(e) for e in endpoints]
        try:
            if self.user is None:
                async with self._client(eps) as c:
                    return await getattr(c, method)(*args, **kwargs)
            c = self._shared_client(eps)
            if len(eps) == 1 and method in ("status", "member_list"):
                kwargs["endpoint"] = eps[0]  # that member's own answer
            return await getattr(c, method)(*args, **kwargs)
        except ClientError as e:
            raise ClusterAPIError(",".join(eps), e.details) from None
        except (OSError, TimeoutError) as e:
            raise ClusterAPIError(",".join(eps), str(e) or type(e).__name__) from None

    async def close(self) -> None:
        children, self._children = self._children, []
        for child in children:
            await child.close()
        if self._shared is not None:
            await self._shared.close()
            self._shared = None

    async def status(self, endpoint: str) -> rpc.StatusResponse:
        return await self._call([endpoint], "status")  # type: ignore[return-value]

    async def member_list(self, endpoints: Sequence[str]) -> rpc.MemberListResponse:
        return await self._call(endpoints, "member_list")  # type: ignore[return-value]

    async def member_add_learner(self, endpoints: Sequence[str], peer_url: str) -> rpc.Member:
        r = await self._call(endpoints, "member_add", [peer_url], is_learner=True)
        return r.member  # type: ignore[attr-defined,no-any-return]

    async def member_promote(self, endpoints: Sequence[str], member_id: int) -> None:
        await self._call(endpoints, "member_promote", member_id)

    async def member_remove(self, endpoints: Sequence[str], member_id: int) -> None:
        await self._call(endpoints, "member_remove", member_id)

    async def move_leader(self, leader: str, target_id: int) -> None:
        await self._call([leader], "move_leader", target_id)
