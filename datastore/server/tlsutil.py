"""TLS for the client, peer and metrics listeners, with etcd's flags and semantics.

etcd's ``transport.TLSInfo`` rules, kept here:
- a listener on an ``https://`` URL needs a key and certificate (given, or made by
  ``--auto-tls`` / ``--peer-auto-tls``);
- a server asks for, and verifies, client certificates when a trusted CA file is given
  *or* client-cert-auth is on (etcd's ``ServerConfig``: either one means
  ``RequireAndVerifyClientCert``);
- a member dialing a peer presents its peer certificate and verifies the peer's against
  the peer trusted CA (the system roots without one); with self-signed (auto-TLS)
  certificates it does not verify (etcd's ``InsecureSkipVerify`` for ``selfCert``).
  gRPC has no "skip verification" switch, so for that case we read the certificate the
  peer presents and trust exactly it for that connection.
- ``--auto-tls`` writes ``cert.pem`` / ``key.pem`` under ``<data-dir>/fixtures/client``
  (``.../peer`` for peers) once, and reuses them on restart; it is ignored when
  certificate files are given.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("datastore.tls")

SELF_SIGNED_VALIDITY_DAYS = 365  # etcd's --self-signed-cert-validity default: 1 year


@dataclass(frozen=True)
class TLSInfo:
    """One listener family's TLS settings (client or peer), like etcd's transport.TLSInfo."""

    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    self_signed: bool = False  # made by auto-TLS: whoever dials with it does not verify
    crl_file: str = ""  # certificates whose serials it lists are refused (datastore.server.crl)

    def empty(self) -> bool:
        return not self.cert_file and not self.key_file

    def verifies_clients(self) -> bool:
        """etcd: a trusted CA file or client-cert-auth makes the server demand client certs."""
        return bool(self.trusted_ca_file) or self.client_cert_auth

    def check(self, what: str) -> None:
        """Fail at start-up, with the flag names, rather than at the first handshake."""
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError(f"{what}: give both a certificate and a key file "
                             f"(cert {self.cert_file!r}, key {self.key_file!r})")
        for path in (self.cert_file, self.key_file, self.trusted_ca_file):
            if path and not os.path.isfile(path):
                raise ValueError(f"{what}: {path} does not exist or is not a file")
        self._check_contents(what)
        if self.crl_file:
            from datastore.server.crl import load_revoked_serials
            try:
                load_revoked_serials(self.crl_file)
            except ValueError as e:
                raise ValueError(f"{what}: {e}") from None
        if self.verifies_clients() and not self.trusted_ca_file:
            # etcd would verify client certificates against the system roots, which no
            # private CA's client certificate passes: every peer/client would be refused.
            raise ValueError(f"{what}: client certificate authentication needs a trusted CA "
                             f"file to verify client certificates against")

    def _check_contents(self, what: str) -> None:
        """Readable PEM that matches, refused in Go's crypto/tls words (etcd's) if not."""
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        def read(path: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as e:
                raise ValueError(f"{what}: open {path}: {(e.strerror or str(e)).lower()}") from None

        if self.cert_file:
            cert, key = read(self.cert_file), read(self.key_file)
            try:
                x509.load_pem_x509_certificates(cert)
            except ValueError:
                raise ValueError(f"{what}: {self.cert_file}: tls: failed to find any PEM data "
                                 "in certificate input") from None
            try:
                load_pem_private_key(key, password=None)
            except (ValueError, TypeError):
                raise ValueError(f"{what}: {self.key_file}: tls: failed to find any PEM data "
                                 "in key input") from None
            except Exception as e:  # an algorithm this build cannot load
                raise ValueError(f"{what}: {self.key_file}: tls: {e}") from None
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert_file, self.key_file)
            except ssl.SSLError:
                raise ValueError(f"{what}: tls: private key does not match public key") from None
        if self.trusted_ca_file:
            try:
                x509.load_pem_x509_certificates(read(self.trusted_ca_file))
            except ValueError:
                raise ValueError(f"{what}: {self.trusted_ca_file}: no PEM certificates "
                                 "to trust") from None

    # ---- credentials ----------------------------------------------------------------
    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        key = Path(self.key_file).read_bytes()
        cert = Path(self.cert_file).read_bytes()
        ca = Path(self.trusted_ca_file).read_bytes() if self.trusted_ca_file else None
        return key, cert, ca

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up a replaced certificate/key at the next handshake.

        etcd reads the certificate files on every handshake, so rotating them (e.g. a
        Kubernetes Secret updated by cert-manager) needs no restart; gRPC asks the fetcher
        before each handshake, and we re-read only when a file's mtime changed. As in
        etcd, the trusted CA is read once, at start-up.
        """
        key, cert, ca = self._read()

        def config(k: bytes, c: bytes) -> object:
            return grpc.ssl_server_certificate_configuration([(k, c)], root_certificates=ca)

        seen = [self._mtimes()]

        def fetch() -> object | None:
            try:
                now = self._mtimes()
                if now == seen[0]:
                    return None
                k, c, _ = self._read()
                seen[0] = now
            except OSError as e:  # mid-rotation: keep serving the last good pair
                log.warning("cannot reload certificate", extra={"error": str(e)})
                return None
            log.info("reloaded TLS certificate", extra={"cert_file": self.cert_file})
            return config(k, c)

        return grpc.dynamic_ssl_server_credentials(
            config(key, cert), fetch, require_client_authentication=self.verifies_clients())

    def _mtimes(self) -> tuple[int, int]:
        return os.stat(self.cert_file).st_mtime_ns, os.stat(self.key_file).st_mtime_ns

    def channel_credentials(self, server_cert: bytes | None = None) -> grpc.ChannelCredentials:
        """Credentials to dial a server; ``server_cert`` pins what a self-signed one showed."""
        key = Path(self.key_file).read_bytes() if self.key_file else None
        cert = Path(self.cert_file).read_bytes() if self.cert_file else None
        ca = Path(self.trusted_ca_file).read_bytes() if self.trusted_ca_file else None
        if ca is None and self.self_signed:
            ca = server_cert
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                            certificate_chain=cert)

    def reloading_ssl_context(self) -> ReloadingSSLContext:
        return ReloadingSSLContext(self)

    def ssl_server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.trusted_ca_file:
            ctx.load_verify_locations(self.trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if self.verifies_clients() else ssl.CERT_NONE
        return ctx


class ReloadingSSLContext:
    """A server SSLContext whose certificate/key are replaced in place when the files change.

    asyncio does the TLS handshake as it accepts a connection, so there is no per-handshake
    hook as gRPC has: ``refresh()`` is called periodically and on every request instead,
    and the next connection gets the new pair.
    """

    def __init__(self, info: TLSInfo) -> None:
        from datastore.server.crl import RevocationList
        self.info = info
        self.ctx = info.ssl_server_context()
        self._seen = info._mtimes()
        self._crl = RevocationList(info.crl_file) if info.crl_file else None

    def refused(self, writer: asyncio.StreamWriter) -> bool:
        """After the handshake, as etcd's TLS listener: is the client's certificate revoked?

        (Python's ssl module shows the leaf certificate only, not intermediates the
        client also sent.)
        """
        if self._crl is None:
            return False
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        return bool(der) and self._crl.refusal(ssl.DER_cert_to_PEM_cert(der).encode()) is not None

    def refresh(self) -> None:
        try:
            now = self.info._mtimes()
            if now == self._seen:
                return
            self.ctx.load_cert_chain(self.info.cert_file, self.info.key_file)
            self._seen = now
        except (OSError, ssl.SSLError) as e:  # mid-rotation: keep the last good pair
            log.warning("cannot reload certificate", extra={"error": str(e)})
            return
        log.info("reloaded TLS certificate", extra={"cert_file": self.info.cert_file})


def is_secure(url: str) -> bool:
    return urlparse(url).scheme in ("https", "unixs")


def fetch_server_cert(host: str, port: int, tls: TLSInfo | None = None,
                      timeout: float = 2.0) -> bytes:
    """The PEM certificate a TLS server presents, unverified (for trusting a self-signed peer).

    Presents our own certificate too, so a server that demands one completes the handshake.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls is not None and not tls.empty():
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        der = s.getpeercert(binary_form=True)
    if not der:
        raise ConnectionError(f"{host}:{port} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def channel_options_for(server_cert: bytes | None) -> list[tuple[str, str]]:
    """Name the pinned certificate's own subject so hostname checks pass (self-signed peers)."""
    if server_cert is None:
        return []
    cert = x509.load_pem_x509_certificate(server_cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    names += san.get_values_for_type(x509.DNSName)
    return [("grpc.ssl_target_name_override", names[0])] if names else []


def _pin_needed(tls: TLSInfo) -> bool:
    """Self-signed (auto-TLS) servers are not verified, like etcd: trust what they show."""
    return tls.self_signed and not tls.trusted_ca_file


def _secure_args(url: str, tls: TLSInfo, pinned: bytes | None,
                 options: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    return {"target": urlparse(url).netloc, "credentials": tls.channel_credentials(pinned),
            "options": [*options, *channel_options_for(pinned)]}


async def open_channel(url: str, tls: TLSInfo,
                       options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A gRPC channel to ``http(s)://HOST:PORT``: TLS with our certificate for https."""
    p = urlparse(url)
    if not is_secure(url):
        return grpc.aio.insecure_channel(p.netloc, options=list(options))
    pinned = None
    if _pin_needed(tls):
        pinned = await asyncio.to_thread(fetch_server_cert, p.hostname or "", p.port or 443, tls)
    return grpc.aio.secure_channel(**_secure_args(url, tls, pinned, options))


def open_channel_sync(url: str, tls: TLSInfo,
                      options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    p = urlparse(url)
    if not is_secure(url):
        return grpc.insecure_channel(p.netloc, options=list(options))
    pinned = None
    if _pin_needed(tls):
        pinned = fetch_server_cert(p.hostname or "", p.port or 443, tls)
    return grpc.secure_channel(**_secure_args(url, tls, pinned, options))


# ---- certificate making (auto-TLS here; datastore.testing.certs builds CAs on it) -------
def new_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def san_for(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def build_cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, *,
               issuer: x509.Name | None = None,
               issuer_key: ec.EllipticCurvePrivateKey | None = None,
               hosts: Iterable[str] = (), is_ca: bool = False,
               server: bool = True, client: bool = True,
               days: int = SELF_SIGNED_VALIDITY_DAYS) -> x509.Certificate:
    """A certificate for ``key``: self-signed unless ``issuer``/``issuer_key`` are given."""
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(issuer or subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew
         .not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(
             digital_signature=True, key_encipherment=not is_ca, key_cert_sign=is_ca,
             crl_sign=is_ca, content_commitment=False, data_encipherment=False,
             key_agreement=False, encipher_only=False, decipher_only=False), critical=True))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages and not is_ca:
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    hosts = list(hosts)
    if hosts:
        b = b.add_extension(san_for(hosts), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def write_pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
              cert_path: Path, key_path: Path) -> None:
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))


def self_cert(dirpath: Path, hosts: Iterable[str],
              days: int = SELF_SIGNED_VALIDITY_DAYS) -> TLSInfo:
    """etcd's transport.SelfCert: reuse ``cert.pem``/``key.pem`` in dirpath, else make them."""
    dirpath.mkdir(parents=True, exist_ok=True)
    os.chmod(dirpath, 0o700)
    cert_path, key_path = (dirpath / "cert.pem").resolve(), (dirpath / "key.pem").resolve()
    if not (cert_path.is_file() and key_path.is_file()):
        key = new_key()
        # Self-signed and its own trust anchor (CA:TRUE): a peer that pins it can verify
        # the chain; etcd's own auto certificates carry Organization "etcd" the same way.
        cert = build_cert(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")]),
                          key, hosts=hosts, is_ca=True, days=days)
        write_pem(cert, key, cert_path, key_path)
        log.warning("automatically generated a self-signed certificate", extra={
            "cert_file": str(cert_path), "hosts": list(hosts),
            "not_after": cert.not_valid_after_utc.isoformat()})
    return TLSInfo(cert_file=str(cert_path), key_file=str(key_path), self_signed=True)


def url_hosts(urls: Iterable[str]) -> list[str]:
    """Hostnames of listen URLs, for a self-signed certificate's names."""
    out = []
    for u in urls:
        h = urlparse(u).hostname
        if h and h not in out:
            out.append(h)
    return out
