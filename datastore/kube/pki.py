"""The control plane's certificates and kubeconfigs, made once per directory and reused.

One CA signs the API server's serving certificate and a client certificate per identity
(the admin in ``system:masters``, the controller-manager, the scheduler, kwok). The
service-account tokens are signed with their own key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from datastore.server.tlsutil import build_cert, new_key, write_pem

# Names the API server's certificate answers to: loopback, and the in-cluster names of
# the ``kubernetes`` Service (10.96.0.1 is the first address of the service range).
APISERVER_HOSTS = ("127.0.0.1", "localhost", "10.96.0.1", "kubernetes", "kubernetes.default",
                   "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")

# identity → (user name, groups); each gets DIR/pki/<identity>.pem and a kubeconfig.
IDENTITIES = {
    "admin": ("kubernetes-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    "kwok": ("kwok", ("system:masters",)),
}


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def serving(self) -> tuple[Path, Path]:
        return self.directory / "apiserver.pem", self.directory / "apiserver-key.pem"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa-key.pem"

    @property
    def service_account_pub(self) -> Path:
        return self.directory / "sa.pub"

    def client(self, identity: str) -> tuple[Path, Path]:
        return self.directory / f"{identity}.pem", self.directory / f"{identity}-key.pem"

    def ensure(self) -> Pki:
        """Make whatever is missing; existing files are kept (a second ``up`` reuses them)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.ca.exists():
            key = new_key()
            name = _name("datastore-kube-ca")
            write_pem(build_cert(name, key, is_ca=True, days=3650), key, self.ca, self.ca_key)
        ca_cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)

        def issue(paths: tuple[Path, Path], subject: x509.Name, **kw: object) -> None:
            if paths[0].exists():
                return
            key = new_key()
            cert = build_cert(subject, key, issuer=ca_cert.subject, issuer_key=ca_key,  # type: ignore[arg-type]
                              days=3650, **kw)  # type: ignore[arg-type]
            write_pem(cert, key, *paths)

        issue(self.serving, _name("kube-apiserver"), hosts=APISERVER_HOSTS, client=False)
        for identity, (user, groups) in IDENTITIES.items():
            issue(self.client(identity), _name(user, groups), server=False)
        if not self.service_account_key.exists():
            key = new_key()
            self.service_account_key.write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            self.service_account_key.chmod(0o600)
            self.service_account_pub.write_bytes(key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return self


def _name(common_name: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_kubeconfig(path: Path, server: str, pki: Pki, identity: str) -> Path:
    """A kubeconfig for ``identity`` with absolute paths to its certificate files."""
    cert, key = pki.client(identity)
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "datastore",
        "clusters": [{"name": "datastore", "cluster": {
            "server": server, "certificate-authority": str(pki.ca.resolve())}}],
        "users": [{"name": identity, "user": {
            "client-certificate": str(cert.resolve()), "client-key": str(key.resolve())}}],
        "contexts": [{"name": "datastore", "context": {"cluster": "datastore", "user": identity}}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
