"""TLS on the client, peer and metrics ports, checked against real etcd 3.4 given the same
certificates (made here with ``datastore.testing.certs``) and flags.

Every case runs on both servers and asserts the same outcome, so a difference from etcd
fails the test even where the expected outcome is also spelled out.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from datastore.testing.certs import CertAuthority, CertPair, self_signed
from datastore.testing.procs import (
    ClientTLS,
    ServerProc,
    datastore_proc,
    etcd_proc,
    etcdctl,
    free_port,
)

FAST_FAIL = ["--dial-timeout=1s", "--command-timeout=3s"]


class PKI:
    """A client CA, a peer CA, and certificates neither vouches for."""

    def __init__(self, d: Path) -> None:
        self.ca = CertAuthority(d / "client-ca", "ca")
        self.server = self.ca.issue("server")
        self.client = self.ca.issue("client", server=False)
        self.peer_ca = CertAuthority(d / "peer-ca", "peer-ca")
        self.rogue_ca = CertAuthority(d / "rogue-ca", "rogue-ca")
        self.rogue_client = self_signed(d / "rogue", "rogue-client")
        self.peer: dict[str, CertPair] = {}

    def peer_cert(self, name: str) -> CertPair:
        if name not in self.peer:
            self.peer[name] = self.peer_ca.issue(name)
        return self.peer[name]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def procs() -> Iterator[list[ServerProc]]:
    started: list[ServerProc] = []
    yield started
    for p in started:  # all at once: each takes a while to shut down
        p.signal(signal.SIGTERM)
    for p in started:
        p.stop(timeout=2.0)  # then SIGKILL: etcd members whose peers are gone linger


def start_all(procs: list[ServerProc], new: list[ServerProc]) -> None:
    """Launch every process first, then wait for each: members of a cluster start together."""
    procs.extend(new)
    for p in new:
        p.launch()
    for p in new:
        p.wait_ready(60)


def ctl_ok(endpoint: str, *args: str) -> bool:
    return etcdctl(endpoint, *FAST_FAIL, *args, check=False, timeout=30).returncode == 0


# ---- client port ---------------------------------------------------------------------------
CLIENT_MODES = {
    # name: (extra server flags beyond cert/key, {client case: expected success})
    "server-cert-only": ([], {"no-cert": True, "client-cert": True, "rogue-cert": True,
                              "no-cacert": False, "plaintext": False}),
    # etcd: a trusted CA file alone already demands client certificates
    "trusted-ca": (["ca"], {"no-cert": False, "client-cert": True, "rogue-cert": False,
                            "no-cacert": False, "plaintext": False}),
    "client-cert-auth": (["ca", "--client-cert-auth"],
                         {"no-cert": False, "client-cert": True, "rogue-cert": False,
                          "no-cacert": False, "plaintext": False}),
}


def client_case_args(pki: PKI, case: str) -> list[str]:
    ca = f"--cacert={pki.ca.cert}"
    return {
        "no-cert": [ca],
        "client-cert": [ca, f"--cert={pki.client.cert}", f"--key={pki.client.key}"],
        "rogue-cert": [ca, f"--cert={pki.rogue_client.cert}", f"--key={pki.rogue_client.key}"],
        "no-cacert": [],  # the system roots do not know our CA
        "plaintext": [],
    }[case]


def test_etcdctl_over_tls_like_etcd(pki: PKI, tmp_path: Path, procs: list[ServerProc]) -> None:
    """Each mode on etcd and datastore side by side; every client case on every server."""
    tls = ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key)
    servers: dict[tuple[str, str], ServerProc] = {}
    for mode, (flags, _) in CLIENT_MODES.items():
        extra = pki.server.flags() + [
            f"--trusted-ca-file={pki.ca.cert}" if f == "ca" else f for f in flags]
        for kind, mk in (("etcd", etcd_proc), ("ds", datastore_proc)):
            servers[mode, kind] = mk(tmp_path / mode / kind, name="n0", extra=extra,
                                     client_scheme="https", tls=tls)
    start_all(procs, list(servers.values()))

    def outcome(key: tuple[str, str, str]) -> bool:
        mode, kind, case = key
        url = servers[mode, kind].client_url
        if case == "plaintext":
            url = url.replace("https://", "http://")
        return ctl_ok(url, *client_case_args(pki, case), "put", f"k-{case}", "v")

    keys = [(m, k, c) for (m, k) in servers for c in CLIENT_MODES[m][1]]
    with ThreadPoolExecutor(len(keys)) as ex:
        got = dict(zip(keys, ex.map(outcome, keys), strict=True))
    for (mode, kind) in servers:
        expected = CLIENT_MODES[mode][1]
        # etcd shows the expectations are etcd's; datastore must give the same
        assert {c: got[mode, kind, c] for c in expected} == expected, (mode, kind)
    # what was written over TLS reads back the same from both
    for s in servers.values():
        out = etcdctl(s.client_url, *tls.etcdctl_flags(), "get", "k-client-cert").stdout
        assert out == b"k-client-cert\nv\n"


def https_get(url: str, ctx: ssl.SSLContext) -> int | str:
    """Status code, or the error class name when the TLS handshake is refused."""
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ssl.SSLError, ConnectionError) as e:
        return type(getattr(e, "reason", e)).__name__


def test_metrics_over_https_uses_client_tls_like_etcd(pki: PKI, tmp_path: Path,
                                                      procs: list[ServerProc]) -> None:
    ports = {"etcd": free_port(), "ds": free_port()}
    servers = [mk(tmp_path / kind, name="n0", extra=[
        *pki.server.flags(), f"--trusted-ca-file={pki.ca.cert}", "--client-cert-auth",
        f"--listen-metrics-urls=https://127.0.0.1:{ports[kind]}"])
        for kind, mk in (("etcd", etcd_proc), ("ds", datastore_proc))]
    start_all(procs, servers)
    with_cert = ssl.create_default_context(cafile=str(pki.ca.cert))
    with_cert.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    without = ssl.create_default_context(cafile=str(pki.ca.cert))
    for kind, port in ports.items():
        url = f"https://127.0.0.1:{port}/health"
        assert https_get(url, with_cert) == 200, kind
        assert https_get(url, without) != 200, kind  # no client certificate: refused


# ---- validation at start-up ---------------------------------------------------------------
def run_to_exit(p: ServerProc) -> str:
    p.launch()
    assert p.popen is not None
    try:
        rc = p.popen.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError(f"{p.kind} kept running:\n{p.log_tail()}") from None
    assert rc != 0, p.log_tail()
    return p.log_tail()


def test_tls_flag_errors_like_etcd(pki: PKI, tmp_path: Path, procs: list[ServerProc]) -> None:
    def make(case: str, mk: Callable[..., ServerProc], d: Path) -> ServerProc:
        if case == "client":
            return mk(d, name="n0", client_scheme="https")
        if case == "peer":
            return mk(d, name="n0", peer_scheme="https")
        if case == "metrics":
            return mk(d, name="n0", extra=[f"--listen-metrics-urls=https://127.0.0.1:{free_port()}"])
        return mk(d, name="n0", client_scheme="https", extra=[f"--cert-file={pki.server.cert}"])

    cases = ["client", "peer", "metrics", "cert-without-key"]
    ps = {(c, kind): make(c, mk, tmp_path / c / kind) for c in cases
          for kind, mk in (("etcd", etcd_proc), ("ds", datastore_proc))}
    procs.extend(ps.values())
    with ThreadPoolExecutor(len(ps)) as ex:
        logs = dict(zip(ps, ex.map(run_to_exit, ps.values()), strict=True))
    for case in cases:
        etcd, ds = ps[case, "etcd"], ps[case, "ds"]
        want = {
            "client": "TLS key/cert (--cert-file, --key-file) must be provided for client url "
                      "{url} with HTTPS scheme",
            "peer": "KeyFile and CertFile are not presented",
            "metrics": "KeyFile and CertFile are not presented",
            "cert-without-key": "",
        }[case]
        assert want.format(url=etcd.client_url) in logs[case, "etcd"], logs[case, "etcd"]
        assert want.format(url=ds.client_url) in logs[case, "ds"], logs[case, "ds"]
    assert "KeyFile and CertFile must both be present" in logs["cert-without-key", "etcd"]
    assert "give both a certificate and a key file" in logs["cert-without-key", "ds"]


# ---- peers --------------------------------------------------------------------------------
def cluster(mk: Callable[..., ServerProc], base: Path, names: list[str], scheme: str,
            extra_for: Callable[[str], list[str]],
            client_scheme: str = "http", tls: ClientTLS | None = None) -> list[ServerProc]:
    ports = {n: (free_port(), free_port()) for n in names}
    initial = ",".join(f"{n}={scheme}://127.0.0.1:{ports[n][1]}" for n in names)
    return [mk(base, name=n, client_port=ports[n][0], peer_port=ports[n][1],
               initial_cluster=initial, peer_scheme=scheme, client_scheme=client_scheme,
               extra=extra_for(n), tls=tls) for n in names]


def peer_handshake(port: int, pair: CertPair, ca: Path) -> bool:
    """Does the peer port accept a peer presenting ``pair``?"""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    ctx.set_alpn_protocols(["h2"])  # gRPC servers drop TLS connections without it
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            # With TLS 1.3 the server judges our certificate after our side of the
            # handshake is done: a refusal arrives as an alert on the first read, while
            # an accepted connection just waits for our request.
            s.settimeout(1.0)
            try:
                return len(s.recv(64)) > 0
            except TimeoutError:
                return True
    except (ssl.SSLError, ConnectionError):
        return False


def test_peer_tls_cluster_refuses_foreign_peer_like_etcd(pki: PKI, tmp_path: Path,
                                                         procs: list[ServerProc]) -> None:
    names = ["p0", "p1", "p2"]

    def peer_flags(n: str) -> list[str]:
        return [*pki.peer_cert(n).flags("peer-"), f"--peer-trusted-ca-file={pki.peer_ca.cert}",
                "--peer-client-cert-auth",
                # member add right after start-up: no wait for peers to count as healthy
                "--strict-reconfig-check=false"]

    clusters = {kind: cluster(mk, tmp_path / kind, names, "https", peer_flags)
                for kind, mk in (("etcd", etcd_proc), ("ds", datastore_proc))}
    start_all(procs, [p for c in clusters.values() for p in c])
    rogue = pki.rogue_ca.issue("rogue-peer")
    for kind, members in clusters.items():
        # replication over TLS: write on one member, read it linearizably on another
        assert ctl_ok(members[0].endpoint, "put", "over-tls", kind), kind
        out = etcdctl(members[2].endpoint, "get", "over-tls", "--print-value-only").stdout
        assert out == f"{kind}\n".encode(), kind
        # followers forward lease keep-alives and TTL queries to the leader over peer TLS
        lease = etcdctl(members[0].endpoint, "lease", "grant", "60").stdout.split()[1].decode()
        for m in members:
            alive = etcdctl(m.endpoint, "lease", "keep-alive", "--once", lease).stdout
            assert f"lease {lease} keepalived with TTL(60)".encode() in alive, (kind, alive)
            ttl = etcdctl(m.endpoint, "lease", "timetolive", lease).stdout
            assert f"lease {lease} granted with TTL(60s)".encode() in ttl, (kind, ttl)
        listed = etcdctl(members[1].endpoint, "member", "list").stdout.decode()
        assert listed.count("https://127.0.0.1:") == 3, listed
        # the peer port itself: the peer CA's certificate passes, a foreign one is refused
        assert peer_handshake(members[0].peer_port, pki.peer_cert("p0"), pki.peer_ca.cert), kind
        assert not peer_handshake(members[0].peer_port, rogue, pki.peer_ca.cert), kind

    # A member whose peer certificate another CA signed is added, then started: the
    # cluster's peers refuse it, so it never joins (both servers give up and exit).
    for kind, mk in (("etcd", etcd_proc), ("ds", datastore_proc)):
        members = clusters[kind]
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        added = etcdctl(members[0].endpoint, *FAST_FAIL, "member", "add", "intruder",
                        "--learner", f"--peer-urls={url}", check=False)
        assert added.returncode == 0, (kind, added.stderr)
        initial = ",".join([*(f"{m.name}={m.peer_url}" for m in members), f"intruder={url}"])
        intruder = mk(tmp_path / kind, name="intruder", peer_port=port, state="existing",
                      initial_cluster=initial, peer_scheme="https", extra=[
                          *rogue.flags("peer-"), f"--peer-trusted-ca-file={pki.peer_ca.cert}"])
        procs.append(intruder)
        run_to_exit(intruder)
        # still a healthy 3-voter cluster that writes
        assert ctl_ok(members[1].endpoint, "put", "after-intruder", "x"), kind


def test_auto_tls_cluster_like_etcd(tmp_path: Path, procs: list[ServerProc]) -> None:
    """--auto-tls and --peer-auto-tls: self-signed certificates under <data-dir>/fixtures."""
    names = ["a0", "a1", "a2"]
    insecure = ClientTLS()  # trust what the server shows, like --insecure-skip-tls-verify
    auto = ["--auto-tls", "--peer-auto-tls"]
    clusters = {kind: cluster(mk, tmp_path / kind, names, "https", lambda n: auto,
                              client_scheme="https", tls=insecure)
                for kind, mk in (("etcd", etcd_proc), ("ds", datastore_proc))}
    procs.extend(p for c in clusters.values() for p in c)
    for p in procs:
        p.launch()
    for p in clusters["ds"]:
        p.wait_ready(60)
    flags = insecure.etcdctl_flags()
    # etcd's auto certificates use P-521 keys, which gRPC's BoringSSL will not verify
    # signatures from, so wait for etcd with (Go) etcdctl instead of wait_ready.
    deadline = time.monotonic() + 60
    for p in clusters["etcd"]:
        while not ctl_ok(p.client_url, *flags, "endpoint", "health"):
            p._check_alive()
            assert time.monotonic() < deadline, p.log_tail()
    for kind, members in clusters.items():
        assert ctl_ok(members[0].client_url, *flags, "put", "auto", kind), kind
        out = etcdctl(members[1].client_url, *flags, "get", "auto", "--print-value-only").stdout
        assert out == f"{kind}\n".encode(), kind
        for m in members:
            for side in ("client", "peer"):
                assert (m.data_dir / "fixtures" / side / "cert.pem").is_file(), (kind, side)
                assert (m.data_dir / "fixtures" / side / "key.pem").is_file(), (kind, side)
    # without TLS, or verifying against the system roots, the client port refuses
    urls = [u for ms in clusters.values()
            for u in (ms[0].client_url, ms[0].client_url.replace("https", "http"))]
    with ThreadPoolExecutor(len(urls)) as ex:
        assert not any(ex.map(lambda u: ctl_ok(u, "get", "auto"), urls))

    # A learner joins over auto-TLS (it reads the cluster from a self-signed peer), is
    # promoted through a follower (which forwards to the leader), and serves.
    joiners = {}
    for kind, mk in (("etcd", etcd_proc), ("ds", datastore_proc)):
        members = clusters[kind]
        cp, pp = free_port(), free_port()
        url = f"https://127.0.0.1:{pp}"
        # strict reconfig: etcd refuses ("unhealthy cluster") until the leader has been
        # connected to every voter for 5 s, which a loaded machine can delay: retry until then
        deadline = time.monotonic() + 60
        while not ctl_ok(members[0].client_url, *flags, "member", "add", "a3", "--learner",
                         f"--peer-urls={url}"):
            assert time.monotonic() < deadline, kind
            time.sleep(0.5)  # poll interval of the condition above
        initial = ",".join([*(f"{m.name}={m.peer_url}" for m in members), f"a3={url}"])
        joiners[kind] = mk(tmp_path / kind, name="a3", client_port=cp, peer_port=pp,
                           state="existing", initial_cluster=initial, peer_scheme="https",
                           client_scheme="https", extra=auto, tls=insecure)
        procs.append(joiners[kind].launch())
    joiners["ds"].wait_ready(60)
    for kind, members in clusters.items():
        follower = next(m for m in members if not is_leader(m, flags))
        deadline = time.monotonic() + 60
        while not ctl_ok(follower.client_url, *flags, "member", "promote", member_id(
                joiners[kind], flags)):  # "not in sync with leader" until it catches up
            assert time.monotonic() < deadline, joiners[kind].log_tail()
        out = etcdctl(joiners[kind].client_url, *flags, "get", "auto", "--print-value-only")
        assert out.stdout == f"{kind}\n".encode(), kind

    # a restart reuses the certificates it made (etcd's SelfCert keeps existing files)
    m = clusters["ds"][2]
    cert = (m.data_dir / "fixtures" / "peer" / "cert.pem").read_bytes()
    m.stop()
    m.start(60)
    assert (m.data_dir / "fixtures" / "peer" / "cert.pem").read_bytes() == cert
    assert ctl_ok(m.client_url, *insecure.etcdctl_flags(), "put", "after-restart", "1")


def _status(p: ServerProc, flags: list[str]) -> dict:
    out = etcdctl(p.client_url, *flags, "endpoint", "status", "-w", "json").stdout
    return json.loads(out)[0]["Status"]


def is_leader(p: ServerProc, flags: list[str]) -> bool:
    st = _status(p, flags)
    return st["header"]["member_id"] == st["leader"]


def member_id(p: ServerProc, flags: list[str]) -> str:
    deadline = time.monotonic() + 60
    while True:  # the learner answers once it has the cluster's state
        r = etcdctl(p.client_url, *FAST_FAIL, *flags, "endpoint", "status", "-w", "json",
                    check=False)
        if r.returncode == 0:
            return f"{json.loads(r.stdout)[0]['Status']['header']['member_id']:x}"
        p._check_alive()
        assert time.monotonic() < deadline, p.log_tail()


# ---- start-up checks that need no process ---------------------------------------------------
def test_prepare_tls_in_process(pki: PKI, tmp_path: Path) -> None:
    from datastore.server.config import Config, prepare_tls
    from datastore.server.tlsutil import TLSInfo

    base = Config(name="x", data_dir=str(tmp_path / "x"),
                  listen_client_urls=("https://127.0.0.1:2379",),
                  listen_peer_urls=("https://127.0.0.1:2380",),
                  client_auto_tls=True, peer_auto_tls=True)
    cfg = prepare_tls(base)
    for side, info in (("client", cfg.client_tls), ("peer", cfg.peer_tls)):
        assert info.self_signed and info.cert_file == str(tmp_path / "x/fixtures" / side / "cert.pem")
    again = prepare_tls(base)  # reused, not remade
    assert Path(again.peer_tls.cert_file).read_bytes() == Path(cfg.peer_tls.cert_file).read_bytes()
    # given files win over auto-TLS
    given = TLSInfo(cert_file=str(pki.server.cert), key_file=str(pki.server.key))
    assert prepare_tls(Config(data_dir=str(tmp_path / "y"), client_tls=given,
                              client_auto_tls=True)).client_tls == given
    # client-cert-auth with nothing to verify against cannot work: refused up front
    with pytest.raises(ValueError, match="needs a trusted CA"):
        prepare_tls(Config(data_dir=str(tmp_path / "z"), listen_peer_urls=("https://127.0.0.1:2380",),
                           peer_auto_tls=True, peer_tls=TLSInfo(client_cert_auth=True)))
    with pytest.raises(ValueError, match="does not exist"):
        prepare_tls(Config(data_dir=str(tmp_path / "w"), client_tls=TLSInfo(
            cert_file=str(tmp_path / "missing.pem"), key_file=str(pki.server.key))))


def test_certificate_rotation_without_restart_like_etcd(pki: PKI, tmp_path: Path,
                                                        procs: list[ServerProc]) -> None:
    """Certificate files replaced in place (a rotated Secret) serve the next handshake."""
    live = CertPair(tmp_path / "live.pem", tmp_path / "live-key.pem")

    def install(pair: CertPair) -> None:
        for src, dst in ((pair.key, live.key), (pair.cert, live.cert)):
            tmp = dst.with_suffix(".tmp")
            tmp.write_bytes(src.read_bytes())
            tmp.replace(dst)  # atomic, as a kubelet Secret update is

    install(pki.server)
    metrics = [free_port(), free_port()]
    servers = [mk(tmp_path / kind, name="n0", client_scheme="https", tls=ClientTLS(pki.ca.cert),
                  extra=[*live.flags(), f"--listen-metrics-urls=https://127.0.0.1:{port}"])
               for (kind, mk), port in zip((("etcd", etcd_proc), ("ds", datastore_proc)), metrics,
                                           strict=True)]
    start_all(procs, servers)

    def health(port: int, ca: Path) -> int | str:
        return https_get(f"https://127.0.0.1:{port}/health", ssl.create_default_context(
            cafile=str(ca)))

    for s, port in zip(servers, metrics, strict=True):
        assert ctl_ok(s.client_url, f"--cacert={pki.ca.cert}", "put", "k", "1"), s.kind
        assert health(port, pki.ca.cert) == 200, s.kind
    install(pki.rogue_ca.issue("rotated"))
    for s, port in zip(servers, metrics, strict=True):  # the metrics listener follows too
        deadline = time.monotonic() + 30  # ours re-checks the files every 2 s
        while health(port, pki.rogue_ca.cert) != 200:
            assert time.monotonic() < deadline, s.kind
            time.sleep(0.05)  # poll interval of the condition above
        assert health(port, pki.ca.cert) != 200, s.kind
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda a: ctl_ok(a[0].client_url, f"--cacert={a[1]}", "get", "k"),
                          [(s, ca) for s in servers for ca in (pki.rogue_ca.cert, pki.ca.cert)]))
    # etcd, then datastore: the new CA's chain is served, the old one no longer verifies
    assert got == [True, False, True, False]
