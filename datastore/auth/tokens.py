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
import re
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


class NopTokens(TokenProvider):
    """``--auth-token ''``: no tokens at all (etcd's tokenNop); client certificates still name users."""

    kind = "nop"

    def assign(self, username: str, revision: int, index: int, prefix: str) -> str:
        from datastore import errors

        raise errors.ErrAuthFailed()

    async def info(self, token: str, revision: int, wait_applied: WaitApplied) -> AuthInfo | None:
        return None


class JWTTokens(TokenProvider):
    kind = "jwt"

    def __init__(self, sign_method: str, priv_key: bytes | None, pub_key: bytes | None,
                 ttl_s: float) -> None:
        import jwt  # pyjwt: only needed when jwt tokens are configured

        from datastore.auth.jwtkeys import FAMILY, JWTKeyError, load_keys

        self._jwt = jwt
        self.alg = sign_method
        self.ttl = ttl_s
        if sign_method not in FAMILY:
            raise InvalidAuthOptions(
                f"auth: invalid auth options (unknown sign-method {sign_method!r}: use RS256/384/512, "
                "PS256/384/512, ES256/384/512, EdDSA or HS256/384/512)")
        try:
            self._sign_key, self._verify_key, self.verify_only = load_keys(sign_method, priv_key, pub_key)
        except JWTKeyError as e:
            raise InvalidAuthOptions(f"{e} ({_KEY_HELP})") from None

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


_KEY_HELP = ("jwt needs sign-method=ALG and priv-key=FILE (PEM), and optionally pub-key=FILE "
             "(PEM public key or certificate); HS* methods take the shared secret in priv-key")
_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
          "m": 60.0, "h": 3600.0}
_GO_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")


def parse_duration_go(s: str) -> float:
    """Go's time.ParseDuration ("5m", "1h30m", "-1.5h", ".5s", "0") in seconds."""
    bad = InvalidAuthOptions(f"auth: invalid auth options (ttl {s!r} is not a duration like 5m or 300s)")
    rest, sign = s, 1.0
    if rest[:1] in ("+", "-"):
        sign, rest = (-1.0 if rest[0] == "-" else 1.0), rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise bad
    total = 0.0
    while rest:
        m = _GO_DURATION_PART.match(rest)
        whole, frac, unit = m.group(1), m.group(2), m.group(3)  # type: ignore[union-attr]
        if (not whole and not frac) or unit not in _UNITS:
            raise bad
        total += float(f"{whole or 0}.{frac or 0}") * _UNITS[unit]
        rest = rest[m.end():]  # type: ignore[union-attr]
    if total * 1e9 > 2**63 - 1:
        raise bad
    return sign * total


def _decompose(option: str) -> tuple[str, dict[str, str]]:
    """etcd's decomposeOpts: TYPE[,KEY=VALUE...]; a pair without exactly one '=', or a key
    given twice, is invalid."""
    kind, *rest = option.split(",")
    opts: dict[str, str] = {}
    for pair in rest:
        parts = pair.split("=")
        if len(parts) != 2:
            raise InvalidAuthOptions(f"auth: invalid auth options ({pair!r} is not KEY=VALUE)")
        if parts[0] in opts:
            raise InvalidAuthOptions(f"auth: invalid auth options ({parts[0]} given twice)")
        opts[parts[0]] = parts[1]
    return kind, opts


def new_token_provider(option: str, simple_ttl_s: float) -> TokenProvider:
    """etcd's NewTokenProvider: ``simple``, ``jwt,sign-method=...,priv-key=...,...`` or ``''``.

    Options are checked in etcd's order (ttl, pub-key and priv-key files, sign-method, then
    the keys); unknown jwt options are logged and ignored, as etcd does. Raises
    InvalidAuthOptions, whose message starts with the flag's name.
    """
    try:
        return _new_token_provider(option, simple_ttl_s)
    except InvalidAuthOptions as e:
        raise InvalidAuthOptions(f"--auth-token: {e}") from None


def _new_token_provider(option: str, simple_ttl_s: float) -> TokenProvider:
    kind, opts = _decompose(option)
    if kind == "simple":
        return SimpleTokens(simple_ttl_s)
    if kind == "":
        return NopTokens()
    if kind != "jwt":
        raise InvalidAuthOptions(f"auth: invalid auth options (unknown token type {kind!r}: "
                                 "use simple or jwt,sign-method=...)")
    ttl = parse_duration_go(opts["ttl"]) if opts.get("ttl") else DEFAULT_JWT_TTL_S

    def read(name: str) -> bytes | None:
        path = opts.get(name)
        if not path:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise InvalidAuthOptions(f"auth: invalid auth options (cannot read {name} "
                                     f"{path}: {e.strerror or e})") from None

    pub, priv = read("pub-key"), read("priv-key")
    if not opts.get("sign-method"):
        raise InvalidAuthOptions(f"auth: invalid auth options (no sign-method; {_KEY_HELP})")
    unknown = sorted(set(opts) - {"sign-method", "pub-key", "priv-key", "ttl"})
    if unknown:
        log.warning("unknown JWT options", extra={"keys": unknown})
    return JWTTokens(opts["sign-method"], priv, pub, ttl)
