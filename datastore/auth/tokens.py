"""Auth tokens: etcd's ``simple`` and ``jwt`` providers (``--auth-token``).

simple: ``<16 random letters>.<log index of the Authenticate entry>``. The letters are
drawn by the member that proposes the Authenticate request and travel in the log entry,
so every member registers the same token when it applies the entry; tokens live in
memory only, expire after ``--auth-token-ttl`` seconds without use, and die with a
password change, user deletion or ``auth disable`` (as etcd's tokenSimple).

jwt: a signed token with the claims ``username``, ``revision`` (the auth revision when it
was issued) and ``exp``; any member holding the key verifies it. A token whose revision is
older than the store's is refused with ErrAuthOldRevision by the permission check.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("datastore.auth")

SIMPLE_TOKEN_LETTERS = string.ascii_letters
SIMPLE_TOKEN_LENGTH = 16
DEFAULT_JWT_TTL_S = 300.0  # etcd: 5 minutes

WaitApplied = Callable[[int], Awaitable[bool]]


class AuthInfo(NamedTuple):
    username: str
    revision: int


class InvalidAuthOptions(ValueError):
    """A bad ``--auth-token`` value: the message says what to fix."""


class TokenProvider:
    kind = "none"

    def gen_prefix(self) -> str:
        return ""

    def assign(self, username: str, revision: int, index: int, prefix: str) -> str:
        raise NotImplementedError

    async def info(self, token: str, revision: int, wait_applied: WaitApplied) -> AuthInfo | None:
        raise NotImplementedError

    def enable(self) -> None:
        pass

    def disable(self) -> None:
        pass

    def invalidate_user(self, username: str) -> None:
        pass


class SimpleTokens(TokenProvider):
    kind = "simple"

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_s if ttl_s > 0 else 300.0
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (username, deadline)
        self._enabled = False
        self._next_sweep = 0.0

    def gen_prefix(self) -> str:
        return "".join(secrets.choice(SIMPLE_TOKEN_LETTERS) for _ in range(SIMPLE_TOKEN_LENGTH))

    def assign(self, username: str, revision: int, index: int, prefix: str) -> str:
        token = f"{prefix}.{index}"
        if self._enabled:
            now = self._clock()
            self._sweep(now)
            self._tokens[token] = (username, now + self.ttl)
        return token

    def _sweep(self, now: float) -> None:
        # Expired tokens are dropped when next used; sweep the rest now and then so
        # tokens that are never used again do not pile up.
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for t in [t for t, (_, dl) in self._tokens.items() if dl <= now]:
            del self._tokens[t]

    async def info(self, token: str, revision: int, wait_applied: WaitApplied) -> AuthInfo | None:
        _, dot, idx = token.partition(".")
        if not dot or not (idx.isascii() and idx.isdigit()) or len(idx) > 20:
            return None
        # A token from an Authenticate this member has not applied yet: wait for it.
        if not await wait_applied(int(idx)):
            return None
        got = self._tokens.get(token)
        if got is None:
            return None
        now = self._clock()
        if got[1] <= now:
            del self._tokens[token]
            return None
        self._tokens[token] = (got[0], now + self.ttl)  # use keeps a token alive
        return AuthInfo(got[0], revision)

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False
        self._tokens.clear()

    def invalidate_user(self, username: str) -> None:
        for t in [t for t, (u, _) in self._tokens.items() if u == username]:
            del self._tokens[t]

    def __len__(self) -> int:
        return len(self._tokens)


class JWTTokens(TokenProvider):
    kind = "jwt"

    def __init__(self, sign_method: str, priv_key: bytes | None, pub_key: bytes | None,
                 ttl_s: float) -> None:
        import jwt  # pyjwt: only needed when jwt tokens are configured

        self._jwt = jwt
        self.alg = sign_method
        self.ttl = ttl_s
        try:
            algo = jwt.get_algorithm_by_name(sign_method)
        except NotImplementedError:
            raise InvalidAuthOptions(f"--auth-token jwt: unknown sign-method {sign_method!r} "
                                     "(use RS256/384/512, PS256/384/512, ES256/384/512, "
                                     "EdDSA or HS256/384/512)") from None
        self.verify_only = False
        if sign_method.startswith("HS"):
            if not priv_key:
                raise InvalidAuthOptions("--auth-token jwt with an HS* sign-method needs "
                                         "priv-key=FILE holding the shared secret")
            self._sign_key: object = priv_key
            self._verify_key: object = priv_key
            return
        if priv_key:
            try:
                self._sign_key = algo.prepare_key(priv_key)
            except Exception as e:
                raise InvalidAuthOptions(f"--auth-token jwt: cannot load priv-key: {e}") from None
            self._verify_key = self._sign_key.public_key()  # type: ignore[attr-defined]
            if pub_key:
                pub = algo.prepare_key(pub_key)
                if algo.to_jwk(pub) != algo.to_jwk(self._verify_key):
                    raise InvalidAuthOptions("--auth-token jwt: pub-key and priv-key do not match")
        elif pub_key:
            self.verify_only = True  # etcd: a member with only the public key verifies
            self._verify_key = algo.prepare_key(pub_key)
        else:
            raise InvalidAuthOptions("--auth-token jwt needs priv-key=FILE (and optionally "
                                     "pub-key=FILE)")

    def assign(self, username: str, revision: int, index: int, prefix: str) -> str:
        if self.verify_only:
            return ""  # the API layer reports it (etcd: ErrVerifyOnly)
        claims = {"username": username, "revision": revision, "exp": int(time.time() + self.ttl)}
        return str(self._jwt.encode(claims, self._sign_key, algorithm=self.alg))

    async def info(self, token: str, revision: int, wait_applied: WaitApplied) -> AuthInfo | None:
        try:
            claims = self._jwt.decode(token, self._verify_key, algorithms=[self.alg],
                                      options={"require": ["exp"]})
        except Exception as e:  # bad signature, expired, malformed: all "invalid token"
            log.warning("refused a JWT", extra={"reason": type(e).__name__})
            return None
        user, rev = claims.get("username"), claims.get("revision")
        if not isinstance(user, str) or not isinstance(rev, int | float):
            return None
        return AuthInfo(user, int(rev))


def parse_duration_go(s: str) -> float:
    """A Go duration string ("5m", "1h30m", "300s", "500ms") in seconds."""
    import re

    parts = re.fullmatch(r"((\d+(\.\d+)?)(ns|us|µs|ms|s|m|h))+", s.strip())
    if not parts:
        raise InvalidAuthOptions(f"--auth-token jwt: ttl {s!r} is not a duration like 5m or 300s")
    mult = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * mult[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|µs|ms|s|m|h)", s))


def new_token_provider(option: str, simple_ttl_s: float) -> TokenProvider:
    """etcd's NewTokenProvider: ``simple`` or ``jwt,sign-method=...,priv-key=...,...``."""
    kind, *rest = option.split(",")
    opts: dict[str, str] = {}
    for pair in rest:
        k, eq, v = pair.partition("=")
        if not eq or "=" in v:
            raise InvalidAuthOptions(f"--auth-token: {pair!r} is not KEY=VALUE")
        if k in opts:
            raise InvalidAuthOptions(f"--auth-token: {k} given twice")
        opts[k] = v
    if kind == "simple":
        return SimpleTokens(simple_ttl_s)
    if kind == "jwt":
        unknown = set(opts) - {"sign-method", "pub-key", "priv-key", "ttl"}
        if unknown:
            raise InvalidAuthOptions(f"--auth-token jwt: unknown option(s) {', '.join(sorted(unknown))}")
        if "sign-method" not in opts:
            raise InvalidAuthOptions("--auth-token jwt needs sign-method=ALG (e.g. RS256)")
        ttl = parse_duration_go(opts["ttl"]) if "ttl" in opts else DEFAULT_JWT_TTL_S

        def read(name: str) -> bytes | None:
            path = opts.get(name)
            if not path:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as e:
                raise InvalidAuthOptions(f"--auth-token jwt: cannot read {name} {path}: {e}") from None

        return JWTTokens(opts["sign-method"], read("priv-key"), read("pub-key"), ttl)
    raise InvalidAuthOptions(f"--auth-token: unknown token type {kind!r} (use simple or jwt)")
