"""The tls overlay's rendered command: 3 members with https client and peer URLs, client
certificates required, started from certificates laid out as the Secrets would mount them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_util import wait_for

from datastore.testing.certs import CertAuthority, CertPair
from datastore.testing.procs import ServerProc, etcdctl
from tests.manifests.localrun import member_proc, member_spec, port_block


def secret_dir(directory: Path, pair: CertPair, ca: CertAuthority) -> Path:
    """What a kubernetes.io/tls Secret with ca.crt looks like once mounted."""
    directory.mkdir(parents=True)
    shutil.copy(pair.cert, directory / "tls.crt")
    shutil.copy(pair.key, directory / "tls.key")
    shutil.copy(ca.cert, directory / "ca.crt")
    return directory


@pytest.fixture
def pki(tmp_path: Path) -> tuple[CertAuthority, CertPair]:
    ca = CertAuthority(tmp_path / "pki")
    return ca, ca.issue("client", server=False)


def tls_args(ca: CertAuthority, client: CertPair | None) -> list[str]:
    args = [f"--cacert={ca.cert}"]
    if client is not None:
        args += [f"--cert={client.cert}", f"--key={client.key}"]
    return args


def https(p: ServerProc) -> str:
    return f"https://127.0.0.1:{p.client_port}"


@pytest.fixture
def tls_cluster(tmp_path: Path, pki: tuple[CertAuthority, CertPair]) -> Iterator[list[ServerProc]]:
    ca, client = pki
    volumes = {
        "server-tls": secret_dir(tmp_path / "server-tls", ca.issue("server"), ca),
        "peer-tls": secret_dir(tmp_path / "peer-tls", ca.issue("peer"), ca),
    }
    spec = member_spec("static/tls")
    base = port_block(spec.replicas)
    procs = [member_proc(spec, k, base, tmp_path, volumes) for k in range(spec.replicas)]

    def healthy(p: ServerProc) -> bool:
        assert p.popen is not None and p.popen.poll() is None, p.log_tail()
        r = etcdctl(https(p), *tls_args(ca, client), "endpoint", "health", check=False, timeout=15)
        return r.returncode == 0

    try:
        for p in procs:
            p.launch()
        for p in procs:
            wait_for(lambda p=p: healthy(p), timeout=90, what=f"{p.name} healthy over https")
        yield procs
    finally:
        for p in procs:
            p.stop()


def test_tls_overlay_command_forms_an_https_cluster(
        tls_cluster: list[ServerProc], pki: tuple[CertAuthority, CertPair]) -> None:
    procs = tls_cluster
    ca, client = pki
    eps = ",".join(https(p) for p in procs)

    def started() -> dict[str, dict[str, object]] | None:
        r = etcdctl(eps, *tls_args(ca, client), "member", "list", "-w", "json", check=False)
        if r.returncode != 0:
            return None  # a member still electing or catching up: poll again
        ms = json.loads(r.stdout)["members"]
        ok = len(ms) == 3 and all(m.get("name") and m.get("clientURLs") for m in ms)
        return {str(m["name"]): m for m in ms} if ok else None

    by_name = wait_for(started, timeout=60, what="3 started members")
    assert sorted(by_name) == ["datastore-0", "datastore-1", "datastore-2"]
    for p in procs:
        assert by_name[p.name]["peerURLs"] == [f"https://127.0.0.1:{p.peer_port}"]
        assert by_name[p.name]["clientURLs"] == [https(p)]

    etcdctl(https(procs[0]), *tls_args(ca, client), "put", "secure", "yes")
    for p in procs:
        out = etcdctl(https(p), *tls_args(ca, client), "get", "secure", "--print-value-only")
        assert out.stdout.strip() == b"yes"

    # --client-cert-auth from the overlay: no client certificate, no service; and the
    # client port speaks only TLS.
    quick = ("--dial-timeout=2s", "--command-timeout=3s")
    refused = etcdctl(https(procs[0]), *tls_args(ca, None), *quick, "get", "secure", check=False)
    assert refused.returncode != 0
    plain = etcdctl(f"http://127.0.0.1:{procs[0].client_port}", *quick, "get", "secure", check=False)
    assert plain.returncode != 0
