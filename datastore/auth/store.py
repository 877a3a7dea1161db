"""The auth store: users, roles, the enabled flag and the auth revision (etcd's auth/store.go).

All of it is state-machine data: changed only by applying log entries, written into the
apply WriteBatch (column family ``meta``, keys ``auth/...``), so it survives restarts and
travels in snapshots with everything else. Apply is deterministic: passwords arrive
already hashed (the proposing member runs bcrypt, as etcd 3.5 does), and simple-token
prefixes are drawn by the proposer too.

The auth revision starts at 1 and grows with every change to users, roles or permissions
and with ``auth disable`` (not ``auth enable``: etcd's behaviour). A request carries the
revision its credentials were checked at; one older than the store's is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import bcrypt
from rocksdict import WriteBatch

from datastore import errors
from datastore.api.authpb import auth_pb2 as authpb
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.internalpb.internal_pb2 import InternalAuthenticateRequest, RequestHeader
from datastore.auth.perms import RangePerms
from datastore.auth.tokens import AuthInfo, SimpleTokens, TokenProvider
from datastore.storage.backend import Backend

log = logging.getLogger("datastore.auth")

ROOT_USER = "root"
ROOT_ROLE = "root"
K_ENABLED = b"auth/enabled"
K_REVISION = b"auth/revision"
P_USER = b"auth/user/"
P_ROLE = b"auth/role/"
BCRYPT_MAX_BYTES = 72  # bcrypt ignores the rest; refused rather than silently truncated
DEFAULT_BCRYPT_COST = 10

_UNCACHED = object()

# etcd 3.5's RoleGet shows the root role as read-write on every key.
ROOT_PERM = authpb.Permission(permType=authpb.Permission.READWRITE, key=b"", range_end=b"\x00")


# Not etcdserver errors: etcd hands these through unmapped (codes.Unknown with the raw
# text), so they live here rather than in datastore.errors' etcdserver table.
class ErrNoPasswordUser(errors.EtcdError):
    """Authenticate with a password for a user created with --no-password."""

    code = "UNKNOWN"
    message = "auth: authentication failed, password was given for no password user"


class ErrPasswordTooLong(errors.EtcdError):
    """A password over bcrypt's 72 input bytes (etcd built with a current Go bcrypt)."""

    code = "UNKNOWN"
    message = "bcrypt: password length exceeds 72 bytes"


def hash_password(password: str, cost: int = DEFAULT_BCRYPT_COST) -> bytes:
    """bcrypt hash (run on the proposing member, never in apply)."""
    raw = password.encode()
    if len(raw) > BCRYPT_MAX_BYTES:
        raise ErrPasswordTooLong()
    return bcrypt.hashpw(raw, bcrypt.gensalt(cost))


def check_password(hashed: bytes, password: str) -> bool:
    raw = password.encode()
    if len(raw) > BCRYPT_MAX_BYTES or not hashed:
        return False
    try:
        return bcrypt.checkpw(raw, hashed)
    except ValueError:  # a malformed stored hash: never a match
        return False


class AuthStore:
    def __init__(self, backend: Backend, tokens: TokenProvider,
                 bcrypt_cost: int = DEFAULT_BCRYPT_COST) -> None:
        self.backend = backend
        self.tokens = tokens
        self.bcrypt_cost = bcrypt_cost
        self._meta = backend.handle("meta")
        self.enabled = False
        self.revision = 1
        self.users: dict[str, authpb.User] = {}
        self.roles: dict[str, authpb.Role] = {}
        self._perm_cache: dict[str, RangePerms | None] = {}  # user -> perms (None: root)
        self.load()

    # ---- state ---------------------------------------------------------------------------
    def load(self) -> None:
        """(Re)read everything from the backend: at start and after a snapshot install."""
        b = self.backend
        self.enabled = b.get("meta", K_ENABLED) == b"\x01"
        raw = b.get("meta", K_REVISION)
        self.revision = int.from_bytes(raw, "big") if raw else 1
        self.users = {}
        for k, v in b.scan("meta", P_USER, P_USER[:-1] + b"0"):
            self.users[k[len(P_USER):].decode()] = authpb.User.FromString(v)
        self.roles = {}
        for k, v in b.scan("meta", P_ROLE, P_ROLE[:-1] + b"0"):
            self.roles[k[len(P_ROLE):].decode()] = authpb.Role.FromString(v)
        self._perm_cache.clear()
        if self.enabled:
            self.tokens.enable()
        else:
            self.tokens.disable()

    def _commit_revision(self, wb: WriteBatch) -> None:
        self.revision += 1
        wb.put(K_REVISION, self.revision.to_bytes(8, "big"), self._meta)

    def _put_user(self, u: authpb.User, wb: WriteBatch) -> None:
        name = u.name.decode()
        self.users[name] = u
        wb.put(P_USER + u.name, u.SerializeToString(), self._meta)
        self._perm_cache.pop(name, None)

    def _put_role(self, r: authpb.Role, wb: WriteBatch) -> None:
        self.roles[r.name.decode()] = r
        wb.put(P_ROLE + r.name, r.SerializeToString(), self._meta)
        self._perm_cache.clear()

    # ---- permission checks (API side for reads, apply side for writes) ---------------------
    def _is_op_permitted(self, ai: AuthInfo | RequestHeader | None, key: bytes, range_end: bytes,
                         write: bool) -> None:
        if not self.enabled:
            return
        if ai is None:
            raise errors.ErrUserEmpty()
        rev = ai.revision if isinstance(ai, AuthInfo) else ai.auth_revision
        if rev == 0:
            raise errors.ErrUserEmpty()
        if rev < self.revision:
            raise errors.ErrAuthOldRevision()
        perms = self._perm_cache.get(ai.username, _UNCACHED)
        if perms is _UNCACHED:
            user = self.users.get(ai.username)
            if user is None:
                raise errors.ErrPermissionDenied()
            roles = list(user.roles)  # (a protobuf repeated field is slow to search)
            # root may do anything: cached as None
            perms = self._perm_cache[ai.username] = None if ROOT_ROLE in roles else RangePerms(
                p for r in roles if r in self.roles for p in self.roles[r].keyPermission)
        if perms is not None and not perms.allows(key, range_end, write):  # type: ignore[union-attr]
            raise errors.ErrPermissionDenied()

    def check_range(self, ai: AuthInfo | RequestHeader | None, key: bytes, range_end: bytes) -> None:
        self._is_op_permitted(ai, key, range_end, False)

    def check_put(self, ai: AuthInfo | RequestHeader | None, key: bytes) -> None:
        self._is_op_permitted(ai, key, b"", True)

    def check_delete(self, ai: AuthInfo | RequestHeader | None, key: bytes, range_end: bytes) -> None:
        self._is_op_permitted(ai, key, range_end, True)

    def check_txn(self, ai: AuthInfo | RequestHeader | None, rt: rpc.TxnRequest,
                  lease_keys: Callable[[int], Iterable[bytes]] | None = None) -> None:
        """Every compare and every op of both branches, nested txns included. With
        ``lease_keys`` (apply), a put's lease too: writing every key it already holds,
        as for a plain put (etcd 3.5.30+/3.6)."""
        for c in rt.compare:
            self.check_range(ai, c.key, c.range_end)
        for op in (*rt.success, *rt.failure):
            kind = op.WhichOneof("request")
            if kind == "request_range":
                self.check_range(ai, op.request_range.key, op.request_range.range_end)
            elif kind == "request_put":
                p = op.request_put
                self.check_put(ai, p.key)
                if lease_keys is not None and p.lease:
                    for k in lease_keys(p.lease):
                        self.check_put(ai, k)
                if p.prev_kv:
                    self.check_range(ai, p.key, b"")
            elif kind == "request_delete_range":
                d = op.request_delete_range
                if d.prev_kv:
                    self.check_range(ai, d.key, d.range_end)
                self.check_delete(ai, d.key, d.range_end)
            elif kind == "request_txn":
                self.check_txn(ai, op.request_txn, lease_keys)

    def check_read_key(self, ai: AuthInfo | RequestHeader | None, key: bytes) -> None:
        self._is_op_permitted(ai, key, b"", False)

    def is_admin(self, ai: AuthInfo | RequestHeader | None) -> bool:
        """etcd's IsAdminPermitted(ai) == nil (true with auth off)."""
        try:
            self.check_admin(ai)
        except errors.EtcdError:
            return False
        return True

    def check_admin(self, ai: AuthInfo | RequestHeader | None) -> None:
        if not self.enabled:
            return
        if ai is None or not ai.username:
            raise errors.ErrUserEmpty()
        user = self.users.get(ai.username)
        if user is None:
            raise errors.ErrUserNotFound()
        if ROOT_ROLE not in user.roles:
            raise errors.ErrPermissionDenied()

    def has_role(self, username: str, role: str) -> bool:
        u = self.users.get(username)
        return u is not None and role in u.roles

    def check_password(self, name: str, password: str) -> int:
        """etcd's CheckPassword (API side, before proposing): the auth revision checked at."""
        if not self.enabled:
            raise errors.ErrAuthNotEnabled()
        user = self.users.get(name)
        if user is None:
            raise errors.ErrAuthFailed()
        if user.options.no_password:
            raise ErrNoPasswordUser()
        rev = self.revision
        if not check_password(user.password, password):
            log.info("invalid password", extra={"user": name})
            raise errors.ErrAuthFailed()
        return rev

    # ---- apply ----------------------------------------------------------------------------
    def auth_enable(self, wb: WriteBatch) -> None:
        if self.enabled:
            return
        root = self.users.get(ROOT_USER)
        if root is None:
            raise errors.ErrRootUserNotExist()
        if ROOT_ROLE not in root.roles:
            raise errors.ErrRootRoleNotExist()
        wb.put(K_ENABLED, b"\x01", self._meta)
        self.enabled = True
        self.tokens.enable()
        self._perm_cache.clear()
        log.info("enabled authentication")

    def auth_disable(self, wb: WriteBatch) -> None:
        if not self.enabled:
            return
        wb.put(K_ENABLED, b"\x00", self._meta)
        self._commit_revision(wb)
        self.enabled = False
        self.tokens.disable()
        log.info("disabled authentication")

    def authenticate(self, r: InternalAuthenticateRequest, index: int) -> str:
        if not self.enabled:
            raise errors.ErrAuthNotEnabled()
        user = self.users.get(r.name)
        if user is None or user.options.no_password:
            raise errors.ErrAuthFailed()
        return self.tokens.assign(r.name, self.revision, index, r.simple_token)

    def user_add(self, r: rpc.AuthUserAddRequest, wb: WriteBatch) -> None:
        if not r.name:
            raise errors.ErrUserEmpty()
        if r.name in self.users:
            raise errors.ErrUserAlreadyExist()
        u = authpb.User(name=r.name.encode())
        u.options.no_password = r.options.no_password
        if not r.options.no_password:
            u.password = r.hashedPassword.encode()
        self._put_user(u, wb)
        self._commit_revision(wb)
        log.info("added a user", extra={"user": r.name})

    def user_delete(self, r: rpc.AuthUserDeleteRequest, wb: WriteBatch) -> None:
        if self.enabled and r.name == ROOT_USER:
            raise errors.ErrInvalidAuthMgmt()
        if r.name not in self.users:
            raise errors.ErrUserNotFound()
        del self.users[r.name]
        wb.delete(P_USER + r.name.encode(), self._meta)
        self._commit_revision(wb)
        self._perm_cache.pop(r.name, None)
        self.tokens.invalidate_user(r.name)
        log.info("deleted a user", extra={"user": r.name})

    def user_change_password(self, r: rpc.AuthUserChangePasswordRequest, wb: WriteBatch) -> None:
        old = self.users.get(r.name)
        if old is None:
            raise errors.ErrUserNotFound()
        u = authpb.User()
        u.CopyFrom(old)
        u.password = b"" if old.options.no_password else r.hashedPassword.encode()
        self._put_user(u, wb)
        self._commit_revision(wb)
        self.tokens.invalidate_user(r.name)
        log.info("changed a password", extra={"user": r.name})

    def user_grant_role(self, r: rpc.AuthUserGrantRoleRequest, wb: WriteBatch) -> None:
        old = self.users.get(r.user)
        if old is None:
            raise errors.ErrUserNotFound()
        if r.role != ROOT_ROLE and r.role not in self.roles:
            raise errors.ErrRoleNotFound()
        if r.role in old.roles:
            return  # etcd ignores a duplicate grant (no revision change)
        u = authpb.User()
        u.CopyFrom(old)
        roles = sorted([*old.roles, r.role])
        del u.roles[:]
        u.roles.extend(roles)
        self._put_user(u, wb)
        self._commit_revision(wb)

    def user_revoke_role(self, r: rpc.AuthUserRevokeRoleRequest, wb: WriteBatch) -> None:
        if self.enabled and r.name == ROOT_USER and r.role == ROOT_ROLE:
            raise errors.ErrInvalidAuthMgmt()
        old = self.users.get(r.name)
        if old is None:
            raise errors.ErrUserNotFound()
        if r.role not in old.roles:
            raise errors.ErrRoleNotGranted()
        u = authpb.User()
        u.CopyFrom(old)
        del u.roles[:]
        u.roles.extend(x for x in old.roles if x != r.role)
        self._put_user(u, wb)
        self._commit_revision(wb)

    def user_get(self, r: rpc.AuthUserGetRequest) -> list[str]:
        u = self.users.get(r.name)
        if u is None:
            raise errors.ErrUserNotFound()
        return list(u.roles)

    def user_list(self) -> list[str]:
        return sorted(self.users, key=str.encode)

    def role_add(self, r: rpc.AuthRoleAddRequest, wb: WriteBatch) -> None:
        if not r.name:
            raise errors.ErrRoleEmpty()
        if r.name in self.roles:
            raise errors.ErrRoleAlreadyExist()
        self._put_role(authpb.Role(name=r.name.encode()), wb)
        self._commit_revision(wb)

    def role_get(self, r: rpc.AuthRoleGetRequest) -> list[authpb.Permission]:
        role = self.roles.get(r.role)
        if role is None:
            raise errors.ErrRoleNotFound()
        if r.role == ROOT_ROLE:
            return [ROOT_PERM]
        return list(role.keyPermission)

    def role_list(self) -> list[str]:
        return sorted(self.roles, key=str.encode)

    def role_delete(self, r: rpc.AuthRoleDeleteRequest, wb: WriteBatch) -> None:
        if self.enabled and r.role == ROOT_ROLE:
            raise errors.ErrInvalidAuthMgmt()
        if r.role not in self.roles:
            raise errors.ErrRoleNotFound()
        del self.roles[r.role]
        wb.delete(P_ROLE + r.role.encode(), self._meta)
        for old in list(self.users.values()):
            if r.role in old.roles:
                u = authpb.User()
                u.CopyFrom(old)
                del u.roles[:]
                u.roles.extend(x for x in old.roles if x != r.role)
                self._put_user(u, wb)
        self._perm_cache.clear()
        self._commit_revision(wb)

    def role_grant_permission(self, r: rpc.AuthRoleGrantPermissionRequest, wb: WriteBatch) -> None:
        if not r.HasField("perm"):
            raise errors.ErrPermissionNotGiven()
        old = self.roles.get(r.name)
        if old is None:
            raise errors.ErrRoleNotFound()
        role = authpb.Role()
        role.CopyFrom(old)
        p = r.perm
        # etcd looks only at the first permission whose key is >= the new one's
        idx = next((i for i, x in enumerate(role.keyPermission) if x.key >= p.key),
                   len(role.keyPermission))
        kp = role.keyPermission
        if idx < len(kp) and kp[idx].key == p.key and kp[idx].range_end == p.range_end:
            kp[idx].permType = p.permType
        else:
            perms = sorted([*role.keyPermission, p], key=lambda x: x.key)  # stable, as etcd's
            del role.keyPermission[:]
            role.keyPermission.extend(perms)
        self._put_role(role, wb)
        self._commit_revision(wb)

    def role_revoke_permission(self, r: rpc.AuthRoleRevokePermissionRequest, wb: WriteBatch) -> None:
        old = self.roles.get(r.role)
        if old is None:
            raise errors.ErrRoleNotFound()
        keep = [p for p in old.keyPermission if p.key != r.key or p.range_end != r.range_end]
        if len(keep) == len(old.keyPermission):
            raise errors.ErrPermissionNotGranted()
        role = authpb.Role(name=old.name, keyPermission=keep)
        self._put_role(role, wb)
        self._commit_revision(wb)


def is_simple(tokens: TokenProvider) -> bool:
    return isinstance(tokens, SimpleTokens)
