"""``--auth-token jwt,...`` keys, read as etcd reads them (golang-jwt's PEM parsers).

Only the first PEM block of a file counts. A public key may be a PKIX public key or an
X.509 certificate (RSA and ECDSA; RSA also a PKCS#1 public key); Ed25519 public keys are
PKIX only. Private keys: PKCS#1 or PKCS#8 (RSA), SEC 1 or PKCS#8 (ECDSA), PKCS#8
(Ed25519). HS* methods use the ``priv-key`` file's bytes as the shared secret. The errors
carry etcd's words (``auth: missing key data``, ``auth: public and private keys don't
match``, golang-jwt's ``key is not a valid RSA private key``...).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


class JWTKeyError(ValueError):
    """A key file etcd would refuse; the message is etcd's (or golang-jwt's) wording."""


# golang-jwt's registry: what etcd accepts as sign-method (case-sensitive)
FAMILY = {**{f"RS{n}": "RSA" for n in (256, 384, 512)},
          **{f"PS{n}": "RSA" for n in (256, 384, 512)},
          **{f"ES{n}": "EC" for n in (256, 384, 512)},
          "EdDSA": "Ed25519",
          **{f"HS{n}": "HMAC" for n in (256, 384, 512)},
          "none": "none"}

_PEM = re.compile(rb"-----BEGIN ([^\r\n-]*)-----\r?\n(.*?)-----END \1-----", re.S)
_NOT_PEM = "invalid key: Key must be a PEM encoded PKCS1 or PKCS8 key"


def first_pem_block(data: bytes) -> bytes:
    """The DER bytes of the first well-formed PEM block (Go's pem.Decode)."""
    for m in _PEM.finditer(data):
        lines = m.group(2).splitlines()
        if lines and b":" in lines[0]:  # RFC 1421 headers, up to a blank line
            while lines and lines[0].strip():
                lines.pop(0)
        try:
            return base64.b64decode(b"".join(line.strip() for line in lines), validate=True)
        except binascii.Error:
            continue
    raise JWTKeyError(_NOT_PEM)


def _private(der: bytes) -> Any:
    try:
        return serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError) as e:  # malformed, or encrypted (no password here)
        raise JWTKeyError(f"cannot parse the private key: {e}") from None
    except Exception as e:  # cryptography's UnsupportedAlgorithm
        raise JWTKeyError(f"cannot parse the private key: {e}") from None


def _public(der: bytes, certificates: bool) -> Any:
    try:
        return serialization.load_der_public_key(der)
    except Exception:
        pass
    if certificates:
        try:
            return x509.load_der_x509_certificate(der).public_key()
        except Exception:
            pass
    what = "a PKIX public key or an X.509 certificate" if certificates else "a PKIX public key"
    raise JWTKeyError(f"cannot parse the public key: not {what}")


_TYPES: dict[str, tuple[type, type, str]] = {
    "RSA": (rsa.RSAPrivateKey, rsa.RSAPublicKey, "RSA"),
    "EC": (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey, "ECDSA"),
    "Ed25519": (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey, "Ed25519"),
}


def _raw(pub: Any) -> bytes:
    return pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_keys(sign_method: str, priv: bytes | None, pub: bytes | None) -> tuple[Any, Any, bool]:
    """(signing key or None, verifying key, verify_only) for an etcd JWT sign-method."""
    family = FAMILY[sign_method]
    if family == "none":
        raise JWTKeyError("unsupported signing method: none")
    if family == "HMAC":
        if not priv:
            raise JWTKeyError("auth: missing key data")
        return priv, priv, False
    priv_t, pub_t, name = _TYPES[family]
    sk = pk = None
    if priv:
        sk = _private(first_pem_block(priv))
        if not isinstance(sk, priv_t):
            raise JWTKeyError(f"key is not a valid {name} private key")
    if pub:
        pk = _public(first_pem_block(pub), certificates=family != "Ed25519")
        if not isinstance(pk, pub_t):
            raise JWTKeyError(f"key is not a valid {name} public key")
    if sk is None:
        if pk is None:
            raise JWTKeyError("auth: missing key data")
        return None, pk, True  # etcd: a member with only the public key verifies
    if pk is not None and _raw(pk) != _raw(sk.public_key()):
        raise JWTKeyError("auth: public and private keys don't match")
    return sk, sk.public_key(), False
