"""A whole running member: the server, its peer transport and its client-facing listeners.

Started in one order and stopped in the reverse, the same way by ``datastore serve`` and
by the in-process embedded server, so both serve the same thing (TLS, the corruption
check, the JSON gateway and the metrics endpoints included).
"""

from __future__ import annotations

import grpc

from datastore.api.acceptors import HotAcceptors
from datastore.api.grpcserver import build_grpc_server
from datastore.gateway import serve_member
from datastore.gateway.server import Gateway
from datastore.server.config import Config, prepare_tls
from datastore.server.etcdserver import EtcdServer
from datastore.server.transport import PeerTransport


class RunningMember:
    def __init__(self, server: EtcdServer, transport: PeerTransport, grpc_server: grpc.aio.Server,
                 http_gateway: Gateway, acceptors: HotAcceptors | None = None) -> None:
        self.server = server
        self.cfg = server.cfg
        self._transport = transport
        self._grpc_server = grpc_server
        self._http_gateway = http_gateway
        self.acceptors = acceptors  # holds the acceptor tasks (the loop holds tasks weakly)

    async def stop(self) -> None:
        await self._http_gateway.close()
        await self._grpc_server.stop(grace=1.0)
        await self.server.cluster_ops.stop()
        await self._transport.stop()
        await self.server.stop()


async def start_member(cfg: Config) -> RunningMember:
    """Open the data dir, join or bootstrap the cluster, and serve clients."""
    cfg = prepare_tls(cfg)  # auto-TLS certificates live in the data dir
    server = EtcdServer(cfg)
    if cfg.initial_corrupt_check:  # before serving anything, as etcd does
        from datastore.server.corrupt import initial_corrupt_check
        await initial_corrupt_check(server, server.request_timeout())
    grpc_server, acceptors = build_grpc_server(server)
    transport = PeerTransport(server)
    server.transport = transport  # type: ignore[assignment]
    await transport.start()
    await server.start()
    server.cluster_ops.start()
    await grpc_server.start()
    acceptors.start()
    http_gateway = await serve_member(server)  # metrics URLs and --listen-client-http-urls
    return RunningMember(server, transport, grpc_server, http_gateway, acceptors)
