"""AuthStore, permission intervals and token providers, on a real RocksDB backend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from datastore import errors
from datastore.api.authpb import auth_pb2 as authpb
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.internalpb.internal_pb2 import InternalAuthenticateRequest, RequestHeader
from datastore.auth.perms import RangePerms
from datastore.auth.store import AuthStore, ErrPasswordTooLong, check_password, hash_password
from datastore.auth.tokens import (
    AuthInfo,
    InvalidAuthOptions,
    JWTTokens,
    SimpleTokens,
    new_token_provider,
)
from datastore.storage.backend import Backend

P = authpb.Permission


def perm(t: int, key: bytes, end: bytes = b"") -> authpb.Permission:
    return P(permType=t, key=key, range_end=end)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- intervals

def test_single_key_needs_containing_interval() -> None:
    rp = RangePerms([perm(P.READ, b"a"), perm(P.WRITE, b"b", b"d")])
    assert rp.allows(b"a", b"", write=False)
    assert not rp.allows(b"a", b"", write=True)
    assert not rp.allows(b"a\x00", b"", write=False)
    assert rp.allows(b"c", b"", write=True)
    assert not rp.allows(b"d", b"", write=True)


def test_range_must_be_covered_without_gap() -> None:
    rp = RangePerms([perm(P.READ, b"a", b"c"), perm(P.READWRITE, b"c", b"e"),
                     perm(P.READ, b"f", b"\x00")])
    assert rp.allows(b"a", b"e", write=False)  # touching intervals join
    assert rp.allows(b"b", b"d", write=False)
    assert not rp.allows(b"a", b"f", write=False)  # gap [e, f)
    assert rp.allows(b"f", b"\x00", write=False)  # open range inside an open permission
    assert rp.allows(b"g", b"zzz", write=False)
    assert not rp.allows(b"e", b"\x00", write=False)
    assert not rp.allows(b"a", b"e", write=True)
    # empty/backwards ranges read nothing; etcd's tree answers from overlapping grants
    assert rp.allows(b"d", b"d", write=False)
    assert not rp.allows(b"a", b"a", write=False)


def test_prefix_permission_refuses_wider_range() -> None:
    rp = RangePerms([perm(P.READ, b"/app/", b"/app0")])
    assert rp.allows(b"/app/", b"/app0", write=False)
    assert rp.allows(b"/app/x", b"/app/y", write=False)
    assert not rp.allows(b"/", b"0", write=False)
    assert not rp.allows(b"/app/", b"\x00", write=False)  # from-key reaches past the prefix
    assert not rp.allows(b"\x00", b"\x00", write=False)


# ---------------------------------------------------------------------------- store

@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    b = Backend(tmp_path / "state")
    yield b
    b.close()


def apply(b: Backend, fn, *args) -> object:  # type: ignore[no-untyped-def]
    wb = b.batch()
    out = fn(*args, wb)
    b.write(wb, sync=False)
    return out


def make_root(store: AuthStore, b: Backend) -> None:
    hashed = hash_password("rootpw", 4).decode()
    apply(b, store.user_add, rpc.AuthUserAddRequest(name="root", hashedPassword=hashed))
    apply(b, store.user_grant_role, rpc.AuthUserGrantRoleRequest(user="root", role="root"))


def test_enable_needs_root_with_root_role(backend: Backend) -> None:
    s = AuthStore(backend, SimpleTokens(300))
    with pytest.raises(errors.ErrRootUserNotExist):
        apply(backend, s.auth_enable)
    apply(backend, s.user_add, rpc.AuthUserAddRequest(name="root", hashedPassword="x"))
    with pytest.raises(errors.ErrRootRoleNotExist):
        apply(backend, s.auth_enable)
    apply(backend, s.user_grant_role, rpc.AuthUserGrantRoleRequest(user="root", role="root"))
    rev = s.revision
    apply(backend, s.auth_enable)
    assert s.enabled and s.revision == rev  # enabling does not move the auth revision
    apply(backend, s.auth_disable)
    assert not s.enabled and s.revision == rev + 1


def test_state_survives_reload(backend: Backend) -> None:
    s = AuthStore(backend, SimpleTokens(300))
    make_root(s, backend)
    apply(backend, s.role_add, rpc.AuthRoleAddRequest(name="r"))
    apply(backend, s.role_grant_permission, rpc.AuthRoleGrantPermissionRequest(
        name="r", perm=perm(P.READ, b"k", b"l")))
    apply(backend, s.auth_enable)
    again = AuthStore(backend, SimpleTokens(300))
    assert again.enabled and again.revision == s.revision
    assert again.user_list() == ["root"] and again.role_list() == ["r"]
    assert again.role_get(rpc.AuthRoleGetRequest(role="r")) == [perm(P.READ, b"k", b"l")]


def test_error_paths_change_nothing(backend: Backend) -> None:
    s = AuthStore(backend, SimpleTokens(300))
    make_root(s, backend)
    apply(backend, s.auth_enable)
    rev = s.revision
    cases = [
        (s.user_add, rpc.AuthUserAddRequest(name=""), errors.ErrUserEmpty),
        (s.user_add, rpc.AuthUserAddRequest(name="root"), errors.ErrUserAlreadyExist),
        (s.user_delete, rpc.AuthUserDeleteRequest(name="root"), errors.ErrInvalidAuthMgmt),
        (s.user_delete, rpc.AuthUserDeleteRequest(name="nobody"), errors.ErrUserNotFound),
        (s.user_grant_role, rpc.AuthUserGrantRoleRequest(user="root", role="nope"),
         errors.ErrRoleNotFound),
        (s.user_revoke_role, rpc.AuthUserRevokeRoleRequest(name="root", role="root"),
         errors.ErrInvalidAuthMgmt),
        (s.role_add, rpc.AuthRoleAddRequest(name=""), errors.ErrRoleEmpty),
        (s.role_delete, rpc.AuthRoleDeleteRequest(role="root"), errors.ErrInvalidAuthMgmt),
        (s.role_delete, rpc.AuthRoleDeleteRequest(role="x"), errors.ErrRoleNotFound),
        (s.role_grant_permission, rpc.AuthRoleGrantPermissionRequest(name="x"),
         errors.ErrPermissionNotGiven),
        (s.role_revoke_permission, rpc.AuthRoleRevokePermissionRequest(role="x"),
         errors.ErrRoleNotFound),
    ]
    for fn, req, err in cases:
        wb = backend.batch()
        with pytest.raises(err):
            fn(req, wb)
        assert wb.len() == 0, (fn, req)
    assert s.revision == rev


def test_permission_checks(backend: Backend) -> None:
    s = AuthStore(backend, SimpleTokens(300))
    make_root(s, backend)
    apply(backend, s.user_add, rpc.AuthUserAddRequest(name="u", hashedPassword="x"))
    apply(backend, s.role_add, rpc.AuthRoleAddRequest(name="r"))
    apply(backend, s.role_grant_permission, rpc.AuthRoleGrantPermissionRequest(
        name="r", perm=perm(P.READWRITE, b"a/", b"a0")))
    apply(backend, s.user_grant_role, rpc.AuthUserGrantRoleRequest(user="u", role="r"))
    s.check_put(None, b"x")  # disabled: anything goes
    apply(backend, s.auth_enable)
    u = AuthInfo("u", s.revision)
    s.check_put(u, b"a/1")
    s.check_range(u, b"a/", b"a0")
    with pytest.raises(errors.ErrPermissionDenied):
        s.check_put(u, b"b")
    with pytest.raises(errors.ErrUserEmpty):
        s.check_range(None, b"a/1", b"")
    with pytest.raises(errors.ErrUserEmpty):
        s.check_range(RequestHeader(), b"a/1", b"")
    with pytest.raises(errors.ErrAuthOldRevision):
        s.check_range(AuthInfo("u", s.revision - 1), b"a/1", b"")
    with pytest.raises(errors.ErrPermissionDenied):
        s.check_range(AuthInfo("ghost", s.revision), b"a/1", b"")
    s.check_range(AuthInfo("root", s.revision), b"\x00", b"\x00")
    txn = rpc.TxnRequest(compare=[rpc.Compare(key=b"b")],
                         success=[rpc.RequestOp(request_put=rpc.PutRequest(key=b"a/1"))])
    with pytest.raises(errors.ErrPermissionDenied):
        s.check_txn(u, txn)  # a compare outside the prefix is a read outside it
    nested = rpc.TxnRequest(success=[rpc.RequestOp(request_txn=rpc.TxnRequest(
        failure=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=b"z"))]))])
    with pytest.raises(errors.ErrPermissionDenied):
        s.check_txn(u, nested)
    with pytest.raises(errors.ErrPermissionDenied):
        s.check_admin(u)
    s.check_admin(AuthInfo("root", 0))
    with pytest.raises(errors.ErrUserNotFound):
        s.check_admin(AuthInfo("ghost", 1))
    # A permission change invalidates the cached intervals.
    apply(backend, s.role_revoke_permission, rpc.AuthRoleRevokePermissionRequest(
        role="r", key=b"a/", range_end=b"a0"))
    with pytest.raises(errors.ErrPermissionDenied):
        s.check_put(AuthInfo("u", s.revision), b"a/1")


def test_passwords() -> None:
    h = hash_password("secret", 4)
    assert check_password(h, "secret") and not check_password(h, "Secret")
    assert not check_password(h, "")
    assert not check_password(b"", "")  # a user whose password was cleared cannot log in
    assert not check_password(b"garbage", "secret")
    with pytest.raises(ErrPasswordTooLong):
        hash_password("x" * 73)
    assert not check_password(h, "secret" + "x" * 100)


# ---------------------------------------------------------------------------- tokens

class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _applied(_: int) -> bool:
    return True


async def _not_applied(_: int) -> bool:
    return False


def test_simple_tokens_expire_unless_used(backend: Backend) -> None:
    clock = Clock()
    t = SimpleTokens(10, clock)
    s = AuthStore(backend, t)
    make_root(s, backend)
    apply(backend, s.auth_enable)
    tok = s.authenticate(InternalAuthenticateRequest(name="root", simple_token="abc"), 42)
    assert tok == "abc.42"
    run = asyncio.run
    assert run(t.info(tok, 7, _applied)) == AuthInfo("root", 7)
    clock.t += 9
    assert run(t.info(tok, 7, _applied)) is not None  # use renews it
    clock.t += 9
    assert run(t.info(tok, 7, _applied)) is not None
    clock.t += 11
    assert run(t.info(tok, 7, _applied)) is None
    tok2 = t.assign("root", 1, 43, "def")
    assert run(t.info(tok2, 1, _not_applied)) is None  # names an entry we do not have
    for bad in ("", "def", "def.", "def.x", "def.43.1", "def.²", "xyz.43"):
        assert run(t.info(bad, 1, _applied)) is None, bad
    t.invalidate_user("root")
    assert run(t.info(tok2, 1, _applied)) is None


def _pem(key: object) -> tuple[bytes, bytes]:
    priv = key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                             serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return priv, pub


def test_jwt_tokens(tmp_path: Path) -> None:
    priv, pub = _pem(rsa.generate_private_key(65537, 2048))
    (tmp_path / "k").write_bytes(priv)
    (tmp_path / "k.pub").write_bytes(pub)
    t = new_token_provider(f"jwt,sign-method=RS256,priv-key={tmp_path / 'k'},"
                           f"pub-key={tmp_path / 'k.pub'},ttl=2m", 300)
    assert isinstance(t, JWTTokens) and t.ttl == 120
    tok = t.assign("alice", 5, 0, "")
    assert asyncio.run(t.info(tok, 9, _applied)) == AuthInfo("alice", 5)
    # signed by another key, expired, wrong algorithm, garbage: all refused
    other, _ = _pem(rsa.generate_private_key(65537, 2048))
    forged = pyjwt.encode({"username": "root", "revision": 5, "exp": 2**40}, other, "RS256")
    expired = pyjwt.encode({"username": "alice", "revision": 5, "exp": 1}, priv, "RS256")
    hs = pyjwt.encode({"username": "root", "revision": 5, "exp": 2**40}, "s" * 32, "HS256")
    noexp = pyjwt.encode({"username": "root", "revision": 5}, priv, "RS256")
    for bad in (forged, expired, hs, noexp, "a.b.c", "", tok[:-4] + "AAAA"):
        assert asyncio.run(t.info(bad, 9, _applied)) is None
    ec_priv, _ = _pem(ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "ec").write_bytes(ec_priv)
    te = new_token_provider(f"jwt,sign-method=ES256,priv-key={tmp_path / 'ec'}", 300)
    assert asyncio.run(te.info(te.assign("bob", 2, 0, ""), 2, _applied)) == AuthInfo("bob", 2)
    (tmp_path / "hs").write_bytes(b"shared-secret-" * 4)
    th = new_token_provider(f"jwt,sign-method=HS256,priv-key={tmp_path / 'hs'}", 300)
    assert asyncio.run(th.info(th.assign("c", 3, 0, ""), 3, _applied)) == AuthInfo("c", 3)


@pytest.mark.parametrize("opt", ["bogus", "jwt", "jwt,sign-method=XX256,priv-key=/nonexistent",
                                 "jwt,sign-method=RS256", "jwt,sign-method=RS256,priv-key=/nonexistent",
                                 "simple,a", "jwt,ttl=1m,ttl=2m", "jwt,sign-method=RS256,ttl=soon"])
def test_bad_token_options(opt: str) -> None:
    with pytest.raises(InvalidAuthOptions):
        new_token_provider(opt, 300)


@pytest.mark.parametrize("opt, says", [
    ("bogus", "unknown token type 'bogus'"),
    ("jwt,sign-method=RS256", "--auth-token: auth: missing key data"),
    ("jwt,priv-key=/nonexistent,sign-method=RS256", "cannot read priv-key /nonexistent"),
])
def test_serve_refuses_bad_auth_token_option(tmp_path: Path, opt: str, says: str) -> None:
    """The real command: a bad --auth-token stops start-up with a message naming the fix."""
    import subprocess
    import sys

    from datastore.testing.procs import free_port

    peer = f"http://127.0.0.1:{free_port()}"
    r = subprocess.run([sys.executable, "-m", "datastore", "serve", "--data-dir", str(tmp_path / "d"),
                        "--listen-client-urls", f"http://127.0.0.1:{free_port()}",
                        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                        "--auth-token", opt], capture_output=True, timeout=60)
    assert r.returncode == 2, r
    assert says in r.stderr.decode(), r.stderr


# ---------------------------------------------------------------------------- property

def _lt(a: bytes | None, b: bytes | None) -> bool:
    return a is not None and (b is None or a < b)


def _etcd_allows(raw: list[tuple[bytes, bytes | None]], key: bytes, range_end: bytes) -> bool:
    """etcd's interval-tree semantics on the unmerged intervals (Intersects / Contains)."""
    if not range_end:
        return any(b <= key and _lt(key, e) for b, e in raw)
    end = None if range_end == b"\x00" else range_end
    hits = sorted((iv for iv in raw if _lt(iv[0], end) and _lt(key, iv[1])), key=lambda iv: iv[0])
    if not hits:
        return False
    min_begin, max_end = hits[0]
    for b, e in hits[1:]:
        if _lt(max_end, b):
            return False  # a gap
        if _lt(max_end, e):
            max_end = e
    return min_begin <= key and not _lt(max_end, end)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_keys = st.binary(min_size=0, max_size=3).map(lambda b: bytes(x % 3 + 97 for x in b))
_ends = st.one_of(st.just(b""), st.just(b"\x00"), _keys.filter(bool))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2]), _keys, _ends), max_size=6), _keys, _ends)
def test_merged_intervals_match_etcd_interval_tree(perms: list, key: bytes, end: bytes) -> None:
    from datastore.auth.perms import perm_interval

    rp = RangePerms([perm(t, k, e) for t, k, e in perms])
    for write, types in ((False, (P.READ, P.READWRITE)), (True, (P.WRITE, P.READWRITE))):
        raw = [perm_interval(k, e) for t, k, e in perms if t in types]
        raw = [(b, e2) for b, e2 in raw if e2 is None or b < e2]  # empty permissions cover nothing
        assert rp.allows(key, end, write) == _etcd_allows(raw, key, end), (perms, key, end, write)
