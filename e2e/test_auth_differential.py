"""Differential test of authentication and RBAC: seeded random sequences on etcd 3.4 and datastore.

Each step runs on real etcd (the oracle) and then on datastore; outcomes are compared
exactly: gRPC status code and message, or the response with only cluster/member ids,
raft term and token values blanked. Steps mix user and role management (as root, as
other users, anonymously), enabling and disabling auth, logins with right and wrong
passwords, and KV operations (Range, Put, DeleteRange, Txn with compares) and watch
creation made with whatever token the login produced, so denied requests and stale or
invalidated tokens are compared too. Tokens are cached per user and dropped when a
server calls them invalid (both servers must agree on that as well).

Left out on purpose (documented differences, checked elsewhere): RoleGet of "root"
(etcd 3.5 lists the implicit root permission, 3.4 an empty list), a grant with no
permission (etcd 3.4 crashes), passwords over 72 bytes and changing a password to ""
(etcd 3.4 hashes them, datastore refuses / stores no password as 3.5 does), from-key
watches (etcd checks only their first key), and tokens sent while auth is disabled (etcd
3.4 calls them invalid; datastore, like etcd's main branch, does not look at them).

Environment: DS_AUTH_DIFF_SEEDS (default "1,2"), DS_AUTH_DIFF_OPS (default 70).
"""

from __future__ import annotations

import os
import queue
import random
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from e2e_util import target_is_etcd
from google.protobuf import text_format
from google.protobuf.message import Message

from datastore.api.authpb import auth_pb2 as authpb
from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc as g
from datastore.testing.procs import ServerProc

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="compares datastore with etcd")

SEEDS = [int(s) for s in os.environ.get("DS_AUTH_DIFF_SEEDS", "1,2").split(",") if s.strip()]
N_OPS = int(os.environ.get("DS_AUTH_DIFF_OPS", "70"))

USERS = ["root", "u1", "u2", "u3"]
ROLES = ["root", "r1", "r2", "r3"]
PASSWORDS = ["pw", "pw2", "", "secret"]
KEYS = [b"a", b"a/1", b"a/2", b"b", b"b/1", b"c"]
# (key, range_end) pairs for permissions and requests: one key, prefixes, from-key, wider
RANGES = [(b"a", b""), (b"a/1", b""), (b"b/1", b""), (b"a/", b"a0"), (b"b/", b"b0"),
          (b"b", b"\x00"), (b"a", b"c"), (b"\x00", b"\x00")]
WATCH_RANGES = [r for r in RANGES if r[1] != b"\x00" or r[0] == b"\x00"]

Outcome = tuple[str, ...]


class Side:
    """One server: a channel, stubs and the tokens cached per (user, password)."""

    def __init__(self, proc: ServerProc) -> None:
        self.proc = proc
        self.ch = grpc.insecure_channel(proc.endpoint)
        self.kv = g.KVStub(self.ch)
        self.auth = g.AuthStub(self.ch)
        self.watch = g.WatchStub(self.ch)
        self.tokens: dict[tuple[str, str], str] = {}

    def md(self, token: str | None) -> tuple[tuple[str, str], ...]:
        return (("token", token),) if token else ()


def _scrub(m: Message) -> None:
    if m.DESCRIPTOR.full_name == "etcdserverpb.ResponseHeader":
        m.cluster_id = m.member_id = m.raft_term = 0  # type: ignore[attr-defined]
        return
    if m.DESCRIPTOR.full_name == "etcdserverpb.AuthenticateResponse":
        m.token = "T" if m.token else ""  # type: ignore[attr-defined]
    for fd, val in m.ListFields():
        if fd.message_type is not None:
            for v in (val if fd.is_repeated else [val]):
                _scrub(v)


def run_full(fn: Callable[[], Any]) -> tuple[Outcome, Any]:
    try:
        r = fn()
    except grpc.RpcError as e:
        return ("err", e.code().name, e.details() or ""), None
    c = type(r)()
    c.CopyFrom(r)
    _scrub(c)
    return ("ok", text_format.MessageToString(c, as_utf8=True)), r


def run(fn: Callable[[], Any]) -> Outcome:
    return run_full(fn)[0]


def watch_once(side: Side, token: str | None, key: bytes, end: bytes) -> Outcome:
    """Create one watch and report its first response (created / canceled, reason)."""
    reqs: queue.Queue[pb.WatchRequest | None] = queue.Queue()
    reqs.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=end)))

    def gen() -> Iterator[pb.WatchRequest]:
        while (r := reqs.get()) is not None:
            yield r

    call = side.watch.Watch(gen(), metadata=side.md(token), timeout=15)
    try:
        first = next(call)
        return ("watch", str(first.created), str(first.canceled), first.cancel_reason,
                str(first.header.revision))
    except grpc.RpcError as e:
        return ("err", e.code().name, e.details() or "")
    finally:
        reqs.put(None)
        call.cancel()


class Gen:
    """Random steps; what it knows (passwords, enabled) comes only from agreed outcomes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.passwords: dict[str, str] = {}
        self.enabled = False

    def user(self) -> str:
        return self.rng.choice(USERS)

    def credentials(self) -> tuple[str, str] | None:
        """Who acts: mostly a known user with the right password, sometimes a wrong one,
        sometimes nobody."""
        r = self.rng.random()
        if r < 0.12:
            return None
        known = list(self.passwords)
        if known and r < 0.85:
            u = self.rng.choice(known)
            if self.rng.random() < 0.5 and "root" in self.passwords and self.enabled:
                u = "root"
            return u, self.passwords[u]
        return self.user(), self.rng.choice(PASSWORDS)

    def perm(self) -> authpb.Permission:
        k, e = self.rng.choice(RANGES)
        return authpb.Permission(permType=self.rng.choice([0, 1, 2]), key=k, range_end=e)  # type: ignore[arg-type]

    def auth_request(self) -> tuple[str, str, Message]:
        rng = self.rng
        choice = rng.randrange(13)
        if choice == 0:
            return "user_add", "UserAdd", pb.AuthUserAddRequest(
                name=self.user(), password=rng.choice(PASSWORDS),
                options=authpb.UserAddOptions(no_password=rng.random() < 0.1))
        if choice == 1:
            return "user_delete", "UserDelete", pb.AuthUserDeleteRequest(name=self.user())
        if choice == 2:
            return "passwd", "UserChangePassword", pb.AuthUserChangePasswordRequest(
                name=self.user(), password=rng.choice([p for p in PASSWORDS if p]))
        if choice == 3:
            return "grant_role", "UserGrantRole", pb.AuthUserGrantRoleRequest(
                user=self.user(), role=rng.choice(ROLES))
        if choice == 4:
            return "revoke_role", "UserRevokeRole", pb.AuthUserRevokeRoleRequest(
                name=self.user(), role=rng.choice(ROLES))
        if choice == 5:
            return "role_add", "RoleAdd", pb.AuthRoleAddRequest(name=rng.choice([*ROLES, ""]))
        if choice == 6:
            return "role_delete", "RoleDelete", pb.AuthRoleDeleteRequest(role=rng.choice(ROLES))
        if choice == 7:
            return "grant_perm", "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
                name=rng.choice(ROLES[1:]), perm=self.perm())
        if choice == 8:
            k, e = rng.choice(RANGES)
            return "revoke_perm", "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(
                role=rng.choice(ROLES[1:]), key=k, range_end=e)
        if choice == 9:
            return "user_get", "UserGet", pb.AuthUserGetRequest(name=self.user())
        if choice == 10:
            return "role_get", "RoleGet", pb.AuthRoleGetRequest(role=rng.choice(ROLES[1:]))
        if choice == 11:
            return "lists", rng.choice(["UserList", "RoleList"]), (
                pb.AuthUserListRequest() if rng.random() < 0.5 else pb.AuthRoleListRequest())
        if rng.random() < 0.5:
            return "toggle", "AuthEnable", pb.AuthEnableRequest()
        return "toggle", "AuthDisable", pb.AuthDisableRequest()

    def kv_request(self) -> tuple[str, str, Message]:
        rng = self.rng
        k, e = rng.choice(RANGES)
        c = rng.randrange(5)
        if c == 0:
            return "put", "Put", pb.PutRequest(key=rng.choice(KEYS), value=rng.choice([b"x", b"y"]),
                                               prev_kv=rng.random() < 0.3)
        if c == 1:
            return "range", "Range", pb.RangeRequest(key=k, range_end=e, serializable=rng.random() < 0.3)
        if c == 2:
            return "delete", "DeleteRange", pb.DeleteRangeRequest(key=k, range_end=e,
                                                                  prev_kv=rng.random() < 0.3)
        ck, ce = rng.choice(RANGES)
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=rng.choice(KEYS), value=b"t")),
               pb.RequestOp(request_range=pb.RangeRequest(key=k, range_end=e)),
               pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=rng.choice(KEYS)))]
        txn = pb.TxnRequest(compare=[pb.Compare(key=ck, range_end=ce, target=pb.Compare.VERSION,
                                                result=pb.Compare.GREATER, version=0)],
                            success=rng.sample(ops, rng.randrange(0, 3)),
                            failure=rng.sample(ops[1:], rng.randrange(0, 2)))
        return "txn", "Txn", txn


def login(side: Side, cred: tuple[str, str] | None) -> tuple[Outcome, str | None]:
    if cred is None:
        return ("anonymous",), None
    if cred in side.tokens:
        return ("cached",), side.tokens[cred]
    out, resp = run_full(lambda: side.auth.Authenticate(
        pb.AuthenticateRequest(name=cred[0], password=cred[1]), timeout=15))
    if resp is not None:
        side.tokens[cred] = resp.token
        return out, resp.token
    return out, None


def step(gen: Gen, sides: tuple[Side, Side], trace: list[str]) -> None:
    rng = gen.rng
    cred = gen.credentials()
    kind = rng.random()
    results: list[list[Outcome]] = []
    label = ""
    req: Message | None = None
    for side in sides:
        got: list[Outcome] = []
        lo, tok = login(side, cred)
        got.append(lo)
        if kind < 0.45:
            if req is None:
                label, method, req = gen.auth_request()
            got.append(run(lambda s=side, t=tok, m=method, q=req: getattr(s.auth, m)(
                q, metadata=s.md(t), timeout=15)))
        elif kind < 0.93:
            if req is None:
                label, method, req = gen.kv_request()
            got.append(run(lambda s=side, t=tok, m=method, q=req: getattr(s.kv, m)(
                q, metadata=s.md(t), timeout=15)))
        else:
            if req is None:
                label = "watch"
                req = pb.WatchCreateRequest(key=(w := rng.choice(WATCH_RANGES))[0], range_end=w[1])
            got.append(watch_once(side, tok, req.key, req.range_end))  # type: ignore[attr-defined]
        if got[-1][:3] == ("err", "UNAUTHENTICATED", "etcdserver: invalid auth token") and cred:
            side.tokens.pop(cred, None)
        results.append(got)
    trace.append(f"{cred} {label} {text_format.MessageToString(req, as_one_line=True)[:160]}"
                 f" -> {results[0]}")
    assert results[1] == results[0], (
        "etcd and datastore differ\n  last steps:\n    " + "\n    ".join(trace[-12:])
        + f"\n  etcd:      {results[0]}\n  datastore: {results[1]}")
    _learn(gen, label, req, cred, results[0])
    if label == "toggle" and isinstance(req, pb.AuthDisableRequest) and results[0][-1][0] == "ok":
        # etcd 3.4 refuses every old token once auth is disabled; datastore (like etcd's
        # main branch) ignores tokens while auth is off. Clients start over, as etcdctl does.
        for s in sides:
            s.tokens.clear()


def _learn(gen: Gen, label: str, req: Message | None, cred: tuple[str, str] | None,
           res: list[Outcome]) -> None:
    if res[-1][0] != "ok":
        return
    r: Any = req
    if label == "user_add" and not r.options.no_password:
        gen.passwords[r.name] = r.password
    elif label == "user_delete":
        gen.passwords.pop(r.name, None)
    elif label == "passwd" and r.name in gen.passwords:
        gen.passwords[r.name] = r.password
    elif label == "toggle":
        gen.enabled = isinstance(r, pb.AuthEnableRequest)


def _bootstrap(sides: tuple[Side, Side], gen: Gen) -> None:
    """Start from a root user with the root role and auth enabled (then anything goes)."""
    for s in sides:
        s.auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"), timeout=15)
        s.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=15)
        s.auth.AuthEnable(pb.AuthEnableRequest(), timeout=15)
    gen.passwords["root"] = "pw"
    gen.enabled = True


def _run_seed(pair: tuple[ServerProc, ServerProc], seed: int, n_ops: int) -> None:
    sides = (Side(pair[0]), Side(pair[1]))
    gen = Gen(random.Random(seed))
    trace: list[str] = []
    try:
        if seed % 2:
            _bootstrap(sides, gen)
        for _ in range(n_ops):
            step(gen, sides, trace)
    finally:
        for s in sides:
            s.ch.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_auth_sequences_like_etcd(pair_factory: Callable[..., Any], seed: int) -> None:
    _run_seed(pair_factory(), seed, N_OPS)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 110))
def test_auth_sequences_like_etcd_long(pair_factory: Callable[..., Any], seed: int) -> None:
    _run_seed(pair_factory(), seed, 400)
