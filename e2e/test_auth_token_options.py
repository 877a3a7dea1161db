"""Every ``--auth-token`` form, on etcd 3.6 and on datastore: both start, or both refuse.

The cases follow etcd's parser (server/auth/store.go decomposeOpts, options.go, jwt.go):
option syntax, ttl durations, unreadable files, sign-methods, and each key family with the
PEM forms golang-jwt reads (public keys as PKIX keys or X.509 certificates, PKCS#1/PKCS#8/
SEC 1 private keys, mismatched pairs, garbage). A refusal must be one clear line and a
non-zero exit, never a traceback. The certificate case, which etcd's own docs use, is then
used for real: tokens issued with it work.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from e2e_util import target_is_etcd

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc as g
from datastore.testing import refs
from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="runs datastore and etcd itself")

def _keys(d: Path) -> None:
    """Key material of every family and form, written once into ``d``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.x509.oid import NameOID

    d.mkdir(parents=True, exist_ok=True)
    enc, pkcs8, trad = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.PrivateFormat.TraditionalOpenSSL)
    spki, pkcs1 = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1
    none = serialization.NoEncryption()

    def cert(key: object, name: str) -> bytes:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())  # type: ignore[attr-defined]
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=30)))
        algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        return b.sign(key, algo).public_bytes(enc)  # type: ignore[arg-type]

    r, r2 = rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048)
    e, e384, ed = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()), \
        ed25519.Ed25519PrivateKey.generate()
    files = {
        "rsa.key": r.private_bytes(enc, trad, none),  # PKCS#1
        "rsa8.key": r.private_bytes(enc, pkcs8, none),
        "rsa.pub": r.public_key().public_bytes(enc, spki),
        "rsa1.pub": r.public_key().public_bytes(enc, pkcs1),
        "rsa.crt": cert(r, "rsa"),
        "rsa2.crt": cert(r2, "other"),
        "rsa-enc.key": r.private_bytes(enc, pkcs8, serialization.BestAvailableEncryption(b"pw")),
        "ec.key": e.private_bytes(enc, trad, none),  # SEC 1
        "ec8.key": e.private_bytes(enc, pkcs8, none),
        "ec.pub": e.public_key().public_bytes(enc, spki),
        "ec.crt": cert(e, "ec"),
        "ec384.key": e384.private_bytes(enc, trad, none),
        "ed.key": ed.private_bytes(enc, pkcs8, none),
        "ed.pub": ed.public_key().public_bytes(enc, spki),
        "ed.crt": cert(ed, "ed"),
        "secret": b"a shared secret of some length\n",
        "garbage": b"\x00\x01 this is not a key\n" * 4,
        "badpem": b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "empty": b"",
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "junk-then-key").write_bytes(b"some words first\n" + files["rsa.key"])
    (d / "adir").mkdir(exist_ok=True)


# (option with {d} for the key folder, does etcd start?)
CASES: list[tuple[str, bool]] = [
    ("simple", True),
    ("simple,anything=goes", True),
    ("", True),  # no tokens at all (etcd's nop provider)
    ("simple,a", False),
    ("bogus", False),
    ("JWT,sign-method=RS256,priv-key={d}/rsa.key", False),
    ("jwt", False),
    ("jwt,sign-method", False),
    ("jwt,sign-method=a=b", False),
    ("jwt,sign-method=RS256,sign-method=RS256,priv-key={d}/rsa.key", False),
    # the form in etcd's docs and tests: the public key as a certificate
    ("jwt,pub-key={d}/rsa.crt,priv-key={d}/rsa.key,sign-method=RS256", True),
    ("jwt,pub-key={d}/rsa.pub,priv-key={d}/rsa8.key,sign-method=RS512", True),
    ("jwt,pub-key={d}/rsa1.pub,priv-key={d}/rsa.key,sign-method=PS256", True),
    ("jwt,pub-key={d}/rsa.crt,sign-method=RS256", True),  # verify only
    ("jwt,pub-key={d}/rsa2.crt,priv-key={d}/rsa.key,sign-method=RS256", False),  # mismatch
    ("jwt,priv-key={d}/junk-then-key,sign-method=RS256", True),
    ("jwt,priv-key={d}/rsa-enc.key,sign-method=RS256", False),
    ("jwt,priv-key={d}/rsa.crt,sign-method=RS256", False),
    ("jwt,priv-key={d}/ec.key,sign-method=RS256", False),
    ("jwt,pub-key={d}/ec.pub,priv-key={d}/rsa.key,sign-method=RS256", False),
    ("jwt,priv-key={d}/garbage,sign-method=RS256", False),
    ("jwt,pub-key={d}/badpem,priv-key={d}/rsa.key,sign-method=RS256", False),
    ("jwt,priv-key={d}/empty,sign-method=RS256", False),
    ("jwt,sign-method=RS256", False),
    ("jwt,priv-key=,sign-method=RS256", False),
    ("jwt,priv-key={d}/missing,sign-method=RS256", False),
    ("jwt,priv-key={d}/adir,sign-method=RS256", False),
    ("jwt,pub-key={d}/missing,priv-key={d}/secret,sign-method=HS256", False),
    ("jwt,pub-key={d}/ec.crt,priv-key={d}/ec.key,sign-method=ES256", True),
    ("jwt,pub-key={d}/ec.pub,priv-key={d}/ec8.key,sign-method=ES384", True),
    ("jwt,pub-key={d}/ec.pub,priv-key={d}/ec384.key,sign-method=ES256", False),
    ("jwt,pub-key={d}/ec.crt,sign-method=ES512", True),
    ("jwt,pub-key={d}/ed.pub,priv-key={d}/ed.key,sign-method=EdDSA", True),
    ("jwt,pub-key={d}/ed.crt,priv-key={d}/ed.key,sign-method=EdDSA", False),
    ("jwt,priv-key={d}/rsa.key,sign-method=EdDSA", False),
    ("jwt,priv-key={d}/secret,sign-method=HS256", True),
    ("jwt,priv-key={d}/secret,sign-method=HS512,pub-key={d}/garbage", True),  # HS: pub ignored
    ("jwt,pub-key={d}/secret,sign-method=HS256", False),
    ("jwt,priv-key={d}/empty,sign-method=HS256", False),
    ("jwt,priv-key={d}/rsa.key,sign-method=none", False),
    ("jwt,priv-key={d}/rsa.key,sign-method=rs256", False),
    ("jwt,priv-key={d}/ec.key,sign-method=ES256K", False),
    ("jwt,priv-key={d}/rsa.key,sign-method=RS256,ttl=5m", True),
    ("jwt,priv-key={d}/rsa.key,sign-method=RS256,ttl=1h2m3.5s", True),
    ("jwt,priv-key={d}/rsa.key,sign-method=RS256,ttl=.5h", True),
    ("jwt,priv-key={d}/rsa.key,sign-method=RS256,ttl=", True),  # empty: the default
    ("jwt,priv-key={d}/rsa.key,sign-method=RS256,ttl=300", False),  # no unit
    ("jwt,priv-key={d}/rsa.key,sign-method=RS256,ttl=5x", False),
    ("jwt,priv-key={d}/rsa.key,sign-method=RS256,ttl=.", False),
    ("jwt,priv-key={d}/rsa.key,sign-method=RS256,ttl=99999999999h", False),
    ("jwt,priv-key={d}/rsa.key,sign-method=RS256,colour=blue", True),  # unknown: warned
]


def _outcome(proc: ServerProc) -> tuple[bool, str]:
    """(serves?, the last line it printed). Refusing means exiting non-zero."""
    proc.launch()
    try:
        proc.wait_ready(60)
        return True, ""
    except RuntimeError:  # it exited
        assert proc.popen is not None and proc.popen.returncode != 0
        lines = [ln for ln in proc.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return False, lines[-1] if lines else ""
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    _keys(d)
    return d


@pytest.mark.parametrize("option, etcd_starts", CASES,
                         ids=[c[0].replace("{d}/", "") or "empty" for c in CASES])
def test_auth_token_option_like_etcd(option: str, etcd_starts: bool, keydir: Path, tmp_path: Path) -> None:
    opt = option.format(d=keydir)
    got_etcd, etcd_says = _outcome(etcd_proc(tmp_path, "e", extra=["--auth-token", opt],
                                             binary=refs.binary("etcd")))
    assert got_etcd == etcd_starts, f"etcd 3.6 {'started' if got_etcd else 'refused'}: {etcd_says}"
    got, says = _outcome(datastore_proc(tmp_path, "ds", extra=["--auth-token", opt]))
    assert got == etcd_starts, f"datastore {'started' if got else 'refused'}: {says}"
    if not got:
        log = (tmp_path / "ds.log").read_text()
        assert "Traceback" not in log, log
        assert says.startswith("datastore: error: --auth-token: ") and "auth" in says, says
        if "invalid auth options" in etcd_says:  # the same words for the same refusal
            assert "auth: invalid auth options" in says, (says, etcd_says)


def _login_works(proc: ServerProc) -> str:
    ch = grpc.insecure_channel(proc.endpoint)
    auth, kv = g.AuthStub(ch), g.KVStub(ch)
    auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"), timeout=30)
    auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=30)
    auth.AuthEnable(pb.AuthEnableRequest(), timeout=30)
    tok = auth.Authenticate(pb.AuthenticateRequest(name="root", password="pw"), timeout=30).token
    kv.Put(pb.PutRequest(key=b"k", value=b"v"), metadata=(("token", tok),), timeout=30)
    ch.close()
    return tok


def test_certificate_as_public_key_issues_working_tokens(keydir: Path, tmp_path: Path) -> None:
    opt = f"jwt,pub-key={keydir}/rsa.crt,priv-key={keydir}/rsa.key,sign-method=RS256,ttl=10m"
    ds = datastore_proc(tmp_path, "ds", extra=["--auth-token", opt]).start()
    try:
        tok = _login_works(ds)
        assert tok.count(".") == 2  # a JWT, not a simple token
    finally:
        ds.stop()
