"""Test certificates: a throwaway CA and the certificates it signs, written as PEM files.

    ca = CertAuthority(tmp_path / "pki")
    server = ca.issue("server", hosts=["127.0.0.1", "localhost"])
    client = ca.issue("client", server=False)
    server.cert, server.key, ca.cert   # paths for --cert-file, --key-file, --trusted-ca-file

ECDSA P-256 keys (fast to make); each certificate can serve and authenticate as a
client unless told otherwise, which is what etcd peer certificates need.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from datastore.server.tlsutil import build_cert, new_key, write_pem

LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path

    def flags(self, prefix: str = "") -> list[str]:
        """``--cert-file X --key-file Y`` (``prefix="peer-"`` for the peer flags)."""
        return [f"--{prefix}cert-file", str(self.cert), f"--{prefix}key-file", str(self.key)]


class CertAuthority:
    """A self-signed CA in ``directory`` (``<name>.pem``, ``<name>-key.pem``)."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        self._key = new_key()
        self.cert = directory / f"{name}.pem"
        self.key = directory / f"{name}-key.pem"
        write_pem(build_cert(self.name, self._key, is_ca=True, days=30), self._key,
                  self.cert, self.key)

    def issue(self, name: str, hosts: Sequence[str] = LOCAL_HOSTS, *, server: bool = True,
              client: bool = True, days: int = 30) -> CertPair:
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = build_cert(subject, key, issuer=self.name, issuer_key=self._key, hosts=hosts,
                          server=server, client=client, days=days)
        pair = CertPair(self.directory / f"{name}.pem", self.directory / f"{name}-key.pem")
        write_pem(cert, key, pair.cert, pair.key)
        return pair


    def write_crl(self, path: Path, revoked: Sequence[CertPair], *, der: bool = False) -> Path:
        """A CRL signed by this CA listing ``revoked`` (PEM, or DER as etcd 3.6 wants)."""
        now = datetime.datetime.now(datetime.UTC)
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.name)
             .last_update(now).next_update(now + datetime.timedelta(days=1)))
        for pair in revoked:
            serial = x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder()
                                          .serial_number(serial).revocation_date(now).build())
        crl = b.sign(self._key, hashes.SHA256())
        path.write_bytes(crl.public_bytes(serialization.Encoding.DER if der
                                          else serialization.Encoding.PEM))
        return path


def self_signed(directory: Path, name: str, hosts: Sequence[str] = LOCAL_HOSTS) -> CertPair:
    """A certificate no CA vouches for (to show it being refused)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    pair = CertPair(directory / f"{name}.pem", directory / f"{name}-key.pem")
    write_pem(build_cert(subject, key, hosts=hosts), key, pair.cert, pair.key)
    return pair
