"""etcd's HTTP endpoints on ``--listen-metrics-urls``: /health, /livez, /readyz, /version,
/metrics, over plain HTTP or, for an ``https://`` URL, TLS with the client certificate
settings (as etcd: ``--cert-file``/``--key-file``, and client certificates demanded when
``--trusted-ca-file`` or ``--client-cert-auth`` is set).

Kubernetes probes etcd over these, so they answer with etcd 3.5's shapes
(``server/etcdserver/api/etcdhttp/health.go``):

- ``/health``: JSON ``{"health": ..., "reason": ...}``; fails on an alarm (unless named
  in ``?exclude=``), on no leader (unless ``?serializable=true``) and on a failed read.
- ``/livez``: the process serves: check ``serializable_read``.
- ``/readyz``: checks ``data_corruption`` (no CORRUPT alarm), ``serializable_read`` and
  ``linearizable_read`` (a read through the leader: fails with no leader). A NOSPACE
  alarm does not make a member unready in etcd 3.5 (reads still work, and the member
  must stay reachable to be defragmented and disarmed); ``/health`` does report it.
- ``?exclude=NAME`` (repeatable) skips a check (an unknown name is only logged);
  ``?verbose`` lists every check on success; a failure always lists them, with 503.
  ``/livez/NAME`` and ``/readyz/NAME`` run one check.

A deliberately small HTTP/1.1 responder: one GET per connection, no keep-alive.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlparse

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.metrics.registry import CONTENT_TYPE as METRICS_CONTENT_TYPE
from datastore.metrics.registry import Exposition, member_registry
from datastore.server.applier import range_in
from datastore.server.config import CLUSTER_VERSION, VERSION
from datastore.server.etcdserver import EtcdServer
from datastore.server.tlsutil import ReloadingSSLContext

log = logging.getLogger("datastore.http")

HEALTH_TIMEOUT_S = 5.0
CERT_REFRESH_S = 2.0
TEXT = "text/plain; charset=utf-8"


def _alarm_reason(alarm: int) -> str:
    return {rpc.NOSPACE: "ALARM NOSPACE", rpc.CORRUPT: "ALARM CORRUPT"}.get(alarm, "ALARM UNKNOWN")


async def _read(s: EtcdServer, serializable: bool) -> None:
    """etcd's probe read: a one-key, keys-only Range; raises the etcd error on failure."""
    if not serializable:
        await s.read_barrier()  # bounded by the server's request timeout (etcd's ReqTimeout)
    range_in(s.kv, rpc.RangeRequest(key=b"\0", keys_only=True, limit=1))


async def health(s: EtcdServer, serializable: bool,
                 excluded_alarms: frozenset[str] = frozenset()) -> tuple[bool, str]:
    """/health: no alarm (but the excluded), a leader (unless serializable), a read."""
    for a in s.alarms.list():
        if rpc.AlarmType.Name(a.alarm) not in excluded_alarms:
            return False, _alarm_reason(a.alarm)
    if not serializable and s.leader_id == 0:
        return False, "RAFT NO LEADER"
    try:
        await asyncio.wait_for(_read(s, serializable), HEALTH_TIMEOUT_S)
    except (errors.EtcdError, TimeoutError) as e:
        return False, f"RANGE ERROR:{str(e) or errors.ErrTimeout()}"
    return True, ""


# ---- /livez and /readyz: named checks -------------------------------------------------
Check = Callable[[EtcdServer], Awaitable[None]]  # raises with the reason on failure


async def _data_corruption(s: EtcdServer) -> None:
    if any(a.alarm == rpc.CORRUPT for a in s.alarms.list()):
        raise RuntimeError("alarm activated: CORRUPT")


async def _serializable_read(s: EtcdServer) -> None:
    await _read(s, True)


async def _linearizable_read(s: EtcdServer) -> None:
    await _read(s, False)


# In etcd's registration order (etcd itself runs them in Go map order).
CHECKS: dict[str, dict[str, Check]] = {
    "/livez": {"serializable_read": _serializable_read},
    "/readyz": {"data_corruption": _data_corruption, "serializable_read": _serializable_read,
                "linearizable_read": _linearizable_read},
}


async def run_checks(s: EtcdServer, checks: dict[str, Check]) -> tuple[bool, str]:
    ok, out = True, []
    for name, check in checks.items():
        try:
            await check(s)
            out.append(f"[+]{name} ok\n")
        except Exception as e:  # any failure is the check's verdict, reported by name
            ok = False
            out.append(f"[-]{name} failed: {e}\n")
    return ok, "".join(out)


async def probe(s: EtcdServer, path: str, query: dict[str, list[str]]) -> tuple[int, str] | None:
    """(status, body) for /livez, /readyz and their /NAME sub-paths; None if not one."""
    parts = path.split("/")  # "/readyz" -> ["", "readyz"]; "/readyz/x" -> [.., "x"]
    registry = CHECKS.get("/" + parts[1]) if len(parts) in (2, 3) else None
    if registry is None:
        return None
    if len(parts) == 3:
        if parts[2] not in registry:
            return None
        checks = {parts[2]: registry[parts[2]]}
    else:
        excluded = {x for x in query.get("exclude", []) if x}
        unknown = excluded - set(registry)
        if unknown:  # etcd 3.5 keeps going, for compatibility across versions
            log.warning("some health checks cannot be excluded",
                        extra={"missing_health_checks": sorted(unknown)})
        checks = {k: v for k, v in registry.items() if k not in excluded}
    ok, reason = await run_checks(s, checks)
    if not ok:
        log.error("health check error", extra={"path": path, "reason": reason})
        return 503, reason + "\n"  # Go's http.Error adds the newline
    return 200, (reason if "verbose" in query else "") + "ok\n"


def metrics(s: EtcdServer) -> str:
    """The member's metrics in Prometheus' text format (its registry is built once)."""
    if s.metrics_exposition is None:
        s.metrics_exposition = Exposition(member_registry(s))
    return s.metrics_exposition.render()


async def _respond(s: EtcdServer, method: str, target: str) -> tuple[int, str, str]:
    url = urlparse(target)
    query = parse_qs(url.query, keep_blank_values=True)
    if method != "GET":
        return 405, TEXT, "Method Not Allowed\n"
    if url.path == "/version":
        return 200, "application/json", json.dumps(
            {"etcdserver": VERSION, "etcdcluster": CLUSTER_VERSION})
    if url.path == "/health":
        ok, reason = await health(s, query.get("serializable", [""])[0] == "true",
                                  frozenset(query.get("exclude", [])))
        return (200 if ok else 503), "application/json", json.dumps(
            {"health": "true" if ok else "false", "reason": reason})
    if url.path == "/metrics":
        return 200, METRICS_CONTENT_TYPE, metrics(s)
    result = await probe(s, url.path, query)
    if result is not None:
        return result[0], TEXT, result[1]
    return 404, TEXT, "404 page not found\n"


_PHRASES = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def _handle(s: EtcdServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  tls: ReloadingSSLContext | None = None) -> None:
    try:
        if tls is not None:
            tls.refresh()  # for the next connection: this one's handshake is done
            if tls.refused(writer):  # --client-crl-file lists its certificate
                return
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        method, target, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        status, ctype, body = await _respond(s, method, target)
        data = body.encode()
        extra = "Allow: GET\r\n" if status == 405 else ""
        if ctype == TEXT:
            extra += "X-Content-Type-Options: nosniff\r\n"
        writer.write(f"HTTP/1.1 {status} {_PHRASES[status]}\r\nContent-Type: {ctype}\r\n{extra}"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError,
            ConnectionError, OSError):
        pass  # a malformed or abandoned request (or a refused TLS handshake): just close
    finally:
        writer.close()


async def serve_http(s: EtcdServer, urls: tuple[str, ...]) -> list[asyncio.Server]:
    servers = []
    for u in urls:
        p = urlparse(u)
        if p.scheme not in ("http", "https") or not p.hostname or not p.port:
            raise ValueError(f"--listen-metrics-urls: {u!r} is not http(s)://HOST:PORT")
        # prepare_tls checked that an https URL has the client certificate and key
        tls = s.cfg.client_tls.reloading_ssl_context() if p.scheme == "https" else None
        srv = await asyncio.start_server(lambda r, w, tls=tls: _handle(s, r, w, tls),
                                         p.hostname, p.port, ssl=tls.ctx if tls else None)
        if tls is not None:
            asyncio.get_running_loop().create_task(_refresh_while_serving(srv, tls))
        servers.append(srv)
    return servers


async def _refresh_while_serving(srv: asyncio.Server, tls: ReloadingSSLContext) -> None:
    """Pick up a rotated certificate even when no request comes (etcd reloads per handshake)."""
    while srv.is_serving():
        await asyncio.sleep(CERT_REFRESH_S)  # a polling period, not a synchronisation
        tls.refresh()
