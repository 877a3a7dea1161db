"""Certificate revocation (``--client-crl-file``, ``--peer-crl-file``) against real etcd.

The real etcdctl presents a revoked and a non-revoked client certificate to etcd 3.4 (a
PEM CRL), etcd 3.6 (DER: 3.6 reads no PEM CRLs) and the datastore (each form). etcd
closes the connection after the handshake (etcdctl: ``context deadline exceeded``); the
datastore refuses every call on it (``transport: certificate serial ... revoked``). Either
way the revoked client gets nothing done, and a replaced CRL file applies to the next
connection without a restart.
"""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from datastore.api.raftpb import raft_pb2, raft_pb2_grpc
from datastore.server.tlsutil import TLSInfo
from datastore.testing import refs
from datastore.testing.certs import CertAuthority, CertPair
from datastore.testing.procs import ClientTLS, ServerProc, datastore_proc, etcd_proc, etcdctl, free_port

FAST_FAIL = ["--dial-timeout=1s", "--command-timeout=3s"]


@pytest.fixture
def procs() -> Iterator[list[ServerProc]]:
    started: list[ServerProc] = []
    yield started
    for p in started:
        p.stop(timeout=2.0)


def start_all(procs: list[ServerProc], new: list[ServerProc]) -> None:
    procs.extend(new)
    for p in new:
        p.launch()
    for p in new:
        p.wait_ready(60)


def ctl(p: ServerProc, ca: CertAuthority, pair: CertPair, *args: str) -> tuple[bool, str]:
    r = etcdctl(p.client_url, *FAST_FAIL, f"--cacert={ca.cert}", f"--cert={pair.cert}",
                f"--key={pair.key}", *args, check=False)
    return r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")


def https_status(url: str, ca: CertAuthority, pair: CertPair) -> int | str:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError) as e:  # refused: the connection is closed
        return type(e).__name__


def replace_file(path: Path, write: Path) -> None:
    os.replace(write, path)  # atomically, as a mounted Secret is updated


def test_client_crl_refuses_revoked_certificate_like_etcd(tmp_path: Path,
                                                          procs: list[ServerProc]) -> None:
    ca = CertAuthority(tmp_path / "pki")
    server = ca.issue("server")
    good, bad = ca.issue("good", server=False), ca.issue("bad", server=False)
    pem = ca.write_crl(tmp_path / "crl.pem", [bad])
    der = ca.write_crl(tmp_path / "crl.der", [bad], der=True)
    tls = ClientTLS(ca.cert, good.cert, good.key)
    metrics: dict[str, str] = {}

    def flags(name: str, crl: Path) -> list[str]:
        metrics[name] = f"https://127.0.0.1:{free_port()}"
        return [*server.flags(), f"--trusted-ca-file={ca.cert}", "--client-cert-auth",
                f"--client-crl-file={crl}", f"--listen-metrics-urls={metrics[name]}"]

    servers = {
        "etcd-3.4": etcd_proc(tmp_path / "e34", extra=flags("etcd-3.4", pem),
                              client_scheme="https", tls=tls),
        "etcd-3.6": etcd_proc(tmp_path / "e36", extra=flags("etcd-3.6", der),
                              client_scheme="https", tls=tls, binary=refs.binary("etcd")),
        "ds-pem": datastore_proc(tmp_path / "dp", extra=flags("ds-pem", pem),
                                 client_scheme="https", tls=tls),
        "ds-der": datastore_proc(tmp_path / "dd", extra=flags("ds-der", der),
                                 client_scheme="https", tls=tls),
    }
    start_all(procs, list(servers.values()))

    for name, p in servers.items():
        ok, out = ctl(p, ca, good, "put", "k", "v")
        assert ok, f"{name}: a certificate not in the CRL is served: {out}"
        ok, out = ctl(p, ca, bad, "put", "revoked", "v")
        assert not ok, f"{name}: a revoked certificate must be refused: {out}"
        ok, out = ctl(p, ca, bad, "get", "k")
        assert not ok and "\nv\n" not in out, f"{name}: a revoked certificate reads nothing: {out}"
        if name.startswith("ds"):
            assert "revoked" in out, f"{name}: the refusal says why: {out}"
        ok, out = ctl(p, ca, good, "get", "revoked")
        assert ok and out.strip() == "", f"{name}: the revoked put wrote nothing: {out}"
        assert https_status(metrics[name] + "/metrics", ca, good) == 200, name
        assert https_status(metrics[name] + "/metrics", ca, bad) != 200, \
            f"{name}: the https metrics listener checks the CRL too"

    # A replaced CRL applies to the next connection, without a restart (etcd reads it
    # per connection).
    ca.write_crl(tmp_path / "next.pem", [bad, good])
    ca.write_crl(tmp_path / "next.der", [bad, good], der=True)
    replace_file(pem, tmp_path / "next.pem")
    replace_file(der, tmp_path / "next.der")
    for name, p in servers.items():
        ok, out = ctl(p, ca, good, "get", "k")
        assert not ok, f"{name}: a certificate revoked since start-up is refused: {out}"


def peer_members_call(port: int, pair: CertPair, ca: CertAuthority) -> str:
    """Ask a datastore peer port for its members (a peer RPC) presenting ``pair``."""
    creds = TLSInfo(str(pair.cert), str(pair.key), str(ca.cert)).channel_credentials()
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        try:
            raft_pb2_grpc.RaftTransportStub(ch).Members(raft_pb2.MembersRequest(), timeout=10)
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"
    return "ok"


def test_peer_crl_refuses_revoked_peer_like_etcd(tmp_path: Path,
                                                 procs: list[ServerProc]) -> None:
    """A peer presenting a revoked certificate gets nothing from the peer port (etcd: its
    HTTPS peer API; the datastore: its gRPC peer service)."""
    ca = CertAuthority(tmp_path / "pki")
    member, good, bad = ca.issue("n0"), ca.issue("good"), ca.issue("bad")
    crl = ca.write_crl(tmp_path / "crl.pem", [bad])
    flags = [*member.flags("peer-"), f"--peer-trusted-ca-file={ca.cert}",
             "--peer-client-cert-auth", f"--peer-crl-file={crl}"]
    e = etcd_proc(tmp_path / "e", name="n0", extra=flags, peer_scheme="https")
    d = datastore_proc(tmp_path / "d", name="n0", extra=flags, peer_scheme="https")
    start_all(procs, [e, d])

    peer_api = f"https://127.0.0.1:{e.peer_port}/members"
    assert https_status(peer_api, ca, good) == 200
    assert https_status(peer_api, ca, bad) != 200
    assert peer_members_call(d.peer_port, good, ca) == "ok"
    refused = peer_members_call(d.peer_port, bad, ca)
    assert refused.startswith("UNAVAILABLE") and "revoked" in refused, refused
