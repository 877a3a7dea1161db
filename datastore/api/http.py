"""etcd's HTTP endpoints on ``--listen-metrics-urls``: /health, /version, /metrics.

Kubernetes probes etcd over these (kubeadm points liveness at ``/health`` on the metrics
port), so they answer with etcd 3.5's shapes. A deliberately small HTTP/1.1 responder:
one GET per connection, no keep-alive.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlparse

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.server.config import CLUSTER_VERSION, VERSION
from datastore.server.etcdserver import EtcdServer

HEALTH_TIMEOUT_S = 5.0


async def health(s: EtcdServer, serializable: bool) -> tuple[bool, str]:
    """etcd's checks: no alarm, a leader, and a read that completes."""
    alarms = s.alarms.list()
    if alarms:
        return False, "ALARM " + ",".join(rpc.AlarmType.Name(a.alarm) for a in alarms)
    if s.leader_id == 0:
        return False, "RAFT NO LEADER"
    if not serializable:
        try:
            await asyncio.wait_for(s.read_barrier(), HEALTH_TIMEOUT_S)
        except (errors.EtcdError, TimeoutError) as e:
            return False, f"QGET ERROR:{e}"
    return True, ""


def metrics(s: EtcdServer) -> str:
    st = s.node.status()
    gauges = {
        "etcd_server_has_leader": int(s.leader_id != 0),
        "etcd_server_is_leader": int(s.is_leader),
        "etcd_server_is_learner": int(s.member_id in s.storage.conf_state.learners),
        "etcd_server_proposals_committed_total": st.hard_state.commit,
        "etcd_server_proposals_applied_total": s.applier.applied_index,
        "etcd_mvcc_db_total_size_in_bytes": s.backend.size() + s.wal.size(),
        "etcd_mvcc_db_total_size_in_use_in_bytes": s.backend.size_in_use(),
        "etcd_debugging_mvcc_current_revision": s.kv.current_rev,
        "etcd_debugging_mvcc_compact_revision": max(s.kv.compact_rev, 0),
        "etcd_debugging_mvcc_keys_total": len(s.kv.index),
        "etcd_debugging_lease_granted_total": len(s.lessor.leases),
        "etcd_debugging_mvcc_watcher_total": sum(1 for _ in s.hub.synced_watchers())
        + len(s.hub.unsynced),
        "etcd_server_quota_backend_bytes": s.cfg.quota_backend_bytes,
    }
    lines = [f'etcd_server_version{{server_version="{VERSION}"}} 1']
    lines += [f"{k} {v}" for k, v in gauges.items()]
    return "\n".join(lines) + "\n"


async def _handle(s: EtcdServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        method, target, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        url = urlparse(target)
        status, ctype = 200, "application/json"
        if method != "GET":
            status, body = 405, json.dumps({"error": "method not allowed"})
        elif url.path == "/version":
            body = json.dumps({"etcdserver": VERSION, "etcdcluster": CLUSTER_VERSION})
        elif url.path in ("/health", "/livez", "/readyz"):
            ok, reason = await health(s, "serializable=true" in url.query)
            status = 200 if ok else 503
            body = json.dumps({"health": "true" if ok else "false", "reason": reason})
        elif url.path == "/metrics":
            ctype, body = "text/plain; version=0.0.4", metrics(s)
        else:
            status, body = 404, json.dumps({"error": "not found"})
        data = body.encode()
        reason_phrase = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                         503: "Service Unavailable"}[status]
        writer.write(f"HTTP/1.1 {status} {reason_phrase}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError,
            ConnectionError):
        pass  # a malformed or abandoned request: just close
    finally:
        writer.close()


async def serve_http(s: EtcdServer, urls: tuple[str, ...]) -> list[asyncio.Server]:
    servers = []
    for u in urls:
        p = urlparse(u)
        if p.scheme != "http" or not p.hostname or not p.port:
            raise ValueError(f"--listen-metrics-urls: {u!r} is not http://HOST:PORT")
        servers.append(await asyncio.start_server(
            lambda r, w: _handle(s, r, w), p.hostname, p.port))
    return servers
