"""Members asking each other for Status and HashKV (the console, the corruption check).

They ask on the peer port (the RaftTransport service), where client auth does not apply,
so both work with auth on, as etcd's corruption check does through its peer handler
(``/members/hashkv``). A member of an older release has no such calls there and answers
UNIMPLEMENTED; then its client URL is asked, as before, which needs a user once auth is on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import grpc

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.raftpb import raft_pb2_grpc
from datastore.server.tlsutil import open_channel
from datastore.server.transport import GRPC_OPTIONS, peer_target

if TYPE_CHECKING:
    from datastore.server.config import Config

log = logging.getLogger("datastore.server")

Method = Literal["HashKV", "Status"]


class PeerQueries:
    """Unary calls to other members, on channels kept per URL until ``forget``/``close``."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def _channel(self, url: str, peer: bool) -> grpc.aio.Channel:
        ch = self._channels.get(url)
        if ch is None:
            if peer:
                peer_target(url)  # validate: a bad URL is a ValueError, not a crash
            ch = await open_channel(url, self.cfg.peer_tls if peer else self.cfg.client_tls,
                                    GRPC_OPTIONS if peer else ())
            if url in self._channels:  # another caller made one while we waited
                await ch.close()
                return self._channels[url]
            self._channels[url] = ch
        return ch

    async def call(self, peer_urls: list[str], client_urls: list[str], method: Method,
                   request: rpc.HashKVRequest | rpc.StatusRequest, rpc_timeout: float,
                   ) -> rpc.HashKVResponse | rpc.StatusResponse:
        """``method`` on the member at these URLs. Raises grpc.aio.AioRpcError, OSError
        (a TLS peer we could not reach) or ValueError (a bad URL, no URL at all)."""
        if peer_urls:
            try:
                ch = await self._channel(peer_urls[0], peer=True)
                stub = raft_pb2_grpc.RaftTransportStub(ch)
                return await getattr(stub, method)(request, timeout=rpc_timeout)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED or not client_urls:
                    raise
                log.debug("peer %s has no %s on its peer port; asking its client URL",
                          peer_urls[0], method)
        if not client_urls:
            raise ValueError("not started yet")
        ch = await self._channel(client_urls[0], peer=False)
        return await getattr(rpc_pb2_grpc.MaintenanceStub(ch), method)(request, timeout=rpc_timeout)

    async def forget(self, keep: set[str]) -> None:
        """Close the channels to URLs not in ``keep`` (members removed or moved)."""
        for url in set(self._channels) - keep:
            await self._channels.pop(url).close()

    async def close(self) -> None:
        await self.forget(set())
