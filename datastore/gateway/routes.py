"""etcd's grpc-gateway routes: HTTP path -> gRPC method, with the request/response types.

The paths are those of etcd's ``google.api.http`` annotations (``rpc.proto``,
``v3lock.proto``, ``v3election.proto``; every one is ``POST`` with ``body: "*"``), served
under ``/v3/`` and, for older clients, ``/v3beta/`` and ``/v3alpha/``. Where etcd binds
two methods to one path (``Hash`` and ``HashKV`` both say ``/v3/maintenance/hash``) the
first registered wins, as in grpc-gateway, so HashKV is not reachable over JSON in etcd
either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf import message as pbmessage
from google.protobuf.descriptor import FileDescriptor

from datastore.api.etcdserverpb import rpc_pb2
from datastore.api.v3electionpb import v3election_pb2
from datastore.api.v3lockpb import v3lock_pb2

PREFIXES = ("/v3/", "/v3beta/", "/v3alpha/")

Kind = Literal["unary", "server_stream", "bidi"]


@dataclass(frozen=True)
class Route:
    full_method: str  # "/etcdserverpb.KV/Range"
    request: type[pbmessage.Message]
    response: type[pbmessage.Message]
    kind: Kind
    keep_sending: bool = False  # Watch: an ended request body must not end the stream


# path below the prefix -> (module, service, method)
_TABLE: dict[str, tuple[object, str, str]] = {
    "kv/range": (rpc_pb2, "KV", "Range"),
    "kv/put": (rpc_pb2, "KV", "Put"),
    "kv/deleterange": (rpc_pb2, "KV", "DeleteRange"),
    "kv/txn": (rpc_pb2, "KV", "Txn"),
    "kv/compaction": (rpc_pb2, "KV", "Compact"),
    "watch": (rpc_pb2, "Watch", "Watch"),
    "lease/grant": (rpc_pb2, "Lease", "LeaseGrant"),
    "lease/revoke": (rpc_pb2, "Lease", "LeaseRevoke"),
    "kv/lease/revoke": (rpc_pb2, "Lease", "LeaseRevoke"),
    "lease/keepalive": (rpc_pb2, "Lease", "LeaseKeepAlive"),
    "lease/timetolive": (rpc_pb2, "Lease", "LeaseTimeToLive"),
    "kv/lease/timetolive": (rpc_pb2, "Lease", "LeaseTimeToLive"),
    "lease/leases": (rpc_pb2, "Lease", "LeaseLeases"),
    "kv/lease/leases": (rpc_pb2, "Lease", "LeaseLeases"),
    "cluster/member/add": (rpc_pb2, "Cluster", "MemberAdd"),
    "cluster/member/remove": (rpc_pb2, "Cluster", "MemberRemove"),
    "cluster/member/update": (rpc_pb2, "Cluster", "MemberUpdate"),
    "cluster/member/list": (rpc_pb2, "Cluster", "MemberList"),
    "cluster/member/promote": (rpc_pb2, "Cluster", "MemberPromote"),
    "maintenance/alarm": (rpc_pb2, "Maintenance", "Alarm"),
    "maintenance/status": (rpc_pb2, "Maintenance", "Status"),
    "maintenance/defragment": (rpc_pb2, "Maintenance", "Defragment"),
    "maintenance/hash": (rpc_pb2, "Maintenance", "Hash"),
    "maintenance/snapshot": (rpc_pb2, "Maintenance", "Snapshot"),
    "maintenance/transfer-leadership": (rpc_pb2, "Maintenance", "MoveLeader"),
    "maintenance/downgrade": (rpc_pb2, "Maintenance", "Downgrade"),
    "auth/enable": (rpc_pb2, "Auth", "AuthEnable"),
    "auth/disable": (rpc_pb2, "Auth", "AuthDisable"),
    "auth/status": (rpc_pb2, "Auth", "AuthStatus"),
    "auth/authenticate": (rpc_pb2, "Auth", "Authenticate"),
    "auth/user/add": (rpc_pb2, "Auth", "UserAdd"),
    "auth/user/get": (rpc_pb2, "Auth", "UserGet"),
    "auth/user/list": (rpc_pb2, "Auth", "UserList"),
    "auth/user/delete": (rpc_pb2, "Auth", "UserDelete"),
    "auth/user/changepw": (rpc_pb2, "Auth", "UserChangePassword"),
    "auth/user/grant": (rpc_pb2, "Auth", "UserGrantRole"),
    "auth/user/revoke": (rpc_pb2, "Auth", "UserRevokeRole"),
    "auth/role/add": (rpc_pb2, "Auth", "RoleAdd"),
    "auth/role/get": (rpc_pb2, "Auth", "RoleGet"),
    "auth/role/list": (rpc_pb2, "Auth", "RoleList"),
    "auth/role/delete": (rpc_pb2, "Auth", "RoleDelete"),
    "auth/role/grant": (rpc_pb2, "Auth", "RoleGrantPermission"),
    "auth/role/revoke": (rpc_pb2, "Auth", "RoleRevokePermission"),
    "lock/lock": (v3lock_pb2, "Lock", "Lock"),
    "lock/unlock": (v3lock_pb2, "Lock", "Unlock"),
    "election/campaign": (v3election_pb2, "Election", "Campaign"),
    "election/proclaim": (v3election_pb2, "Election", "Proclaim"),
    "election/leader": (v3election_pb2, "Election", "Leader"),
    "election/observe": (v3election_pb2, "Election", "Observe"),
    "election/resign": (v3election_pb2, "Election", "Resign"),
}


def _build() -> dict[str, Route]:
    routes: dict[str, Route] = {}
    for path, (module, service, method) in _TABLE.items():
        fd: FileDescriptor = module.DESCRIPTOR  # type: ignore[attr-defined]
        sd = fd.services_by_name[service]
        md = sd.methods_by_name[method]
        req = getattr(module, md.input_type.name)
        resp = getattr(module, md.output_type.name)
        if md.client_streaming:
            kind: Kind = "bidi"
        elif md.server_streaming:
            kind = "server_stream"
        else:
            kind = "unary"
        routes[path] = Route(f"/{sd.full_name}/{method}", req, resp, kind,
                             keep_sending=(service == "Watch"))
    return routes


ROUTES = _build()


def lookup(path: str) -> tuple[bool, Route | None]:
    """(is a gateway path, its route or None for an unknown one)."""
    for prefix in PREFIXES:
        if path.startswith(prefix):
            return True, ROUTES.get(path[len(prefix):])
    return False, None
