"""Helpers for the snapshot interoperability tests: one workload, one dump of what a member
serves, a field-by-field comparison, and the real etcd 3.4 / 3.6 tools.

The workload leaves every kind of state a snapshot carries: keys with several versions,
deletions, a multi-op transaction (sub-revisions), leases with and without keys, a
compaction with writes after it, users, roles with permissions, and auth enabled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from datastore.api.authpb import auth_pb2 as authpb
from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc as g
from datastore.testing import refs
from datastore.testing.procs import ETCD_BIN, ETCDCTL_BIN, ServerProc

ROOT_PW = "rootpw"


@dataclass(frozen=True)
class Etcd:
    """One real etcd release: its server, and the tools that save and restore snapshots."""

    version: str
    server: str
    ctl: str
    restore_tool: list[str]  # argv prefix of `snapshot restore` / `snapshot status`

    @staticmethod
    def get(version: str) -> Etcd:
        if version == "3.4":
            return Etcd("3.4", ETCD_BIN, ETCDCTL_BIN, [ETCDCTL_BIN])
        try:
            util = str(refs.binary("etcdutl"))
            return Etcd("3.6", str(refs.binary("etcd")), str(refs.binary("etcdctl")), [util])
        except refs.RefError as e:
            raise AssertionError(str(e)) from None  # CI builds it (scripts/test.sh): never skip


def bbolt_bin() -> str:
    try:
        return str(refs.binary("bbolt"))
    except refs.RefError as e:
        raise AssertionError(str(e)) from None


def run(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ETCDCTL_API": "3"}
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def save_snapshot(etcdctl: str, proc: ServerProc, dest: Path) -> None:
    run([etcdctl, f"--endpoints={proc.endpoint}", f"--user=root:{ROOT_PW}", "snapshot", "save",
         str(dest)])


def restore_argv(tool: list[str], snap: Path, target: ServerProc) -> list[str]:
    return [*tool, "snapshot", "restore", str(snap), "--data-dir", str(target.data_dir),
            "--name", target.name, "--initial-cluster", f"{target.name}={target.peer_url}",
            "--initial-advertise-peer-urls", target.peer_url]


def datastore_restore_argv(snap: Path, target: ServerProc, *extra: str) -> list[str]:
    return restore_argv([sys.executable, "-m", "datastore"], snap, target) + list(extra)


class Conn:
    """Stubs for one member; ``login()`` switches to root's token (auth on)."""

    def __init__(self, proc: ServerProc) -> None:
        self.ch = grpc.insecure_channel(proc.endpoint)
        self.kv = g.KVStub(self.ch)
        self.lease = g.LeaseStub(self.ch)
        self.maint = g.MaintenanceStub(self.ch)
        self.auth = g.AuthStub(self.ch)
        self.watch = g.WatchStub(self.ch)
        self.md: tuple[tuple[str, str], ...] = ()

    def login(self) -> None:
        tok = self.auth.Authenticate(pb.AuthenticateRequest(name="root", password=ROOT_PW),
                                     timeout=10).token
        self.md = (("token", tok),)

    def call(self, stub: Any, method: str, req: Any) -> Any:
        return getattr(stub, method)(req, metadata=self.md, timeout=10)

    def watch_until_canceled(self, create: pb.WatchCreateRequest) -> pb.WatchResponse:
        """Open a watch (the request side held open) and return its cancel response."""
        done = threading.Event()

        def requests() -> Iterator[pb.WatchRequest]:
            yield pb.WatchRequest(create_request=create)
            done.wait(30)

        call = self.watch.Watch(requests(), metadata=self.md, timeout=30)
        try:
            return next(r for r in call if r.canceled)
        finally:
            done.set()
            call.cancel()

    def close(self) -> None:
        self.ch.close()


def populate(c: Conn) -> None:
    """The workload (auth ends up enabled; ``c`` is logged in as root afterwards)."""
    put = lambda k, v, lease=0: c.kv.Put(pb.PutRequest(key=k, value=v, lease=lease))  # noqa: E731
    for i in range(40):
        put(b"k/%02d" % (i % 15), b"v%d" % i)
    c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"k/03"))
    c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"k/1", range_end=b"k/2"))  # k/10..k/14
    c.kv.Txn(pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"t/a", value=b"1")),
        pb.RequestOp(request_put=pb.PutRequest(key=b"t/b", value=b"2")),
        pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"k/04"))]))
    l1 = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600)).ID
    l2 = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=900)).ID
    c.lease.LeaseGrant(pb.LeaseGrantRequest(ID=0x1234, TTL=700))  # a lease without keys
    put(b"l/a", b"x", l1)
    put(b"l/b", b"y", l1)
    put(b"l/c", b"z", l2)
    put(b"l/b", b"y2", l2)  # moved to another lease
    mid = c.kv.Range(pb.RangeRequest(key=b"k/00")).header.revision - 5
    c.kv.Compact(pb.CompactionRequest(revision=mid, physical=True))
    for i in range(5):
        put(b"after/%d" % i, b"w" * (i * 300))  # values of several sizes after the compaction
    put(b"big", os.urandom(20_000))  # bigger than a page: an overflow page in the db file
    a = c.auth
    a.RoleAdd(pb.AuthRoleAddRequest(name="root"))
    a.UserAdd(pb.AuthUserAddRequest(name="root", password=ROOT_PW))
    a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
    a.RoleAdd(pb.AuthRoleAddRequest(name="reader"))
    a.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="reader", perm=authpb.Permission(
        permType=authpb.Permission.READ, key=b"k/", range_end=b"k0")))
    a.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="reader", perm=authpb.Permission(
        permType=authpb.Permission.READWRITE, key=b"t/a")))
    a.RoleAdd(pb.AuthRoleAddRequest(name="empty"))
    a.UserAdd(pb.AuthUserAddRequest(name="alice", password="alicepw"))
    a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="reader"))
    a.UserAdd(pb.AuthUserAddRequest(name="bob", password="bobpw"))
    a.AuthEnable(pb.AuthEnableRequest())
    c.login()
    c.call(c.kv, "Put", pb.PutRequest(key=b"last", value=b"written as root"))


def dump(c: Conn) -> dict[str, Any]:
    """Everything a snapshot should carry, as served by the member (``c`` logged in)."""
    rng = c.call(c.kv, "Range", pb.RangeRequest(key=b"\0", range_end=b"\0"))
    rev = rng.header.revision
    hkv = c.call(c.maint, "HashKV", pb.HashKVRequest(revision=rev))
    out: dict[str, Any] = {
        "revision": rev,
        "compact_revision": hkv.compact_revision,
        "hash_kv": hkv.hash,
        "keys": {kv.key: {"value": kv.value, "create_revision": kv.create_revision,
                          "mod_revision": kv.mod_revision, "version": kv.version,
                          "lease": kv.lease} for kv in rng.kvs},
    }
    try:  # below the compaction point nothing can be read; at it, the old values can
        c.call(c.kv, "Range", pb.RangeRequest(key=b"k/00", revision=hkv.compact_revision - 1))
        out["below_compaction"] = "readable"
    except grpc.RpcError as e:
        out["below_compaction"] = e.details()
    at = c.call(c.kv, "Range", pb.RangeRequest(key=b"k/", range_end=b"k0",
                                               revision=hkv.compact_revision))
    out["at_compaction"] = [(kv.key, kv.value, kv.mod_revision) for kv in at.kvs]
    leases = {}
    for le in c.call(c.lease, "LeaseLeases", pb.LeaseLeasesRequest()).leases:
        t = c.call(c.lease, "LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=le.ID, keys=True))
        leases[le.ID] = {"granted_ttl": t.grantedTTL, "keys": sorted(t.keys)}
    out["leases"] = leases
    out["users"] = {u: list(c.call(c.auth, "UserGet", pb.AuthUserGetRequest(name=u)).roles)
                    for u in c.call(c.auth, "UserList", pb.AuthUserListRequest()).users}
    out["roles"] = {r: [(p.permType, p.key, p.range_end) for p in
                        c.call(c.auth, "RoleGet", pb.AuthRoleGetRequest(role=r)).perm]
                    for r in c.call(c.auth, "RoleList", pb.AuthRoleListRequest()).roles}
    try:
        c.kv.Range(pb.RangeRequest(key=b"k/00"), timeout=10)  # no token
        out["auth"] = "disabled"
    except grpc.RpcError as e:
        out["auth"] = f"enabled ({e.details()})"
    for user, pw in (("alice", "alicepw"), ("bob", "bobpw"), ("alice", "wrong")):
        try:
            c.auth.Authenticate(pb.AuthenticateRequest(name=user, password=pw), timeout=10)
            out[f"login {user}/{pw}"] = "ok"
        except grpc.RpcError as e:
            out[f"login {user}/{pw}"] = e.details()
    return out


def differences(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Field-by-field differences (keys compared one by one), empty when the dumps agree.
    The root role's permissions are left out: etcd 3.4 lists none, 3.5+ read-write on all."""
    diffs = []
    for field in sorted(set(want) | set(got)):
        a, b = want.get(field), got.get(field)
        if field == "roles":
            a = {k: v for k, v in (a or {}).items() if k != "root"}
            b = {k: v for k, v in (b or {}).items() if k != "root"}
        if field == "keys":
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    diffs.append(f"key {key!r}: {a.get(key)} != {b.get(key)}")
        elif a != b:
            diffs.append(f"{field}: {a!r} != {b!r}")
    return diffs
