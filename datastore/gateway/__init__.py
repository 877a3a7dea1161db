"""etcd's JSON gateway (grpc-gateway) for a member: see :mod:`datastore.gateway.server`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datastore.gateway.server import Gateway
    from datastore.server.etcdserver import EtcdServer


async def serve_member(server: EtcdServer) -> Gateway:
    """The member's HTTP listeners: ``--listen-metrics-urls`` (the gateway plus /health,
    /livez, /readyz, /version, /metrics and the console at /dashboard) and
    ``--listen-client-http-urls`` (the same).

    The gateway dials the member's own client URL (plain preferred; with only https ones,
    the member's certificate), as etcd's gateway dials its own gRPC server.
    """
    from datastore.api import http
    from datastore.api.lock import self_endpoint
    from datastore.console.member import MemberView
    from datastore.console.web import Console
    from datastore.gateway.server import Gateway

    target, tls = self_endpoint(server)
    cfg = server.cfg

    async def fallback(method: str, target_path: str) -> tuple[int, str, str]:
        return await http._respond(server, method, target_path)

    view = MemberView(server)  # the console at /dashboard, wherever /metrics is served
    if cfg.listen_metrics_urls or cfg.listen_client_http_urls:
        view.start()  # the charts' samples, once a second
    gw = Gateway(target, tls.credentials() if tls is not None else None, fallback,
                 max_body=4 * cfg.max_request_bytes + 64 * 1024,
                 console=Console("member", view.view, on_close=view.close))
    for url in (*cfg.listen_metrics_urls, *cfg.listen_client_http_urls):
        # prepare_tls checked that an https URL has the client certificate and key
        tls = cfg.client_tls.reloading_ssl_context() if url.startswith("https://") else None
        await gw.listen(url, tls)
    return gw
