"""Bad start-up flags end with one clear line and a non-zero exit, never a traceback.

The property (hypothesis): whatever value a flag gets, reading the configuration either
succeeds or raises ValueError/OSError (which ``datastore serve`` prints as one line,
``datastore: error: ...``, exit 2) with a one-line message. Then the real command, for
one value of each kind etcd refuses.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datastore.server.config import add_serve_arguments, config_from_args, prepare_tls
from datastore.testing.certs import CertAuthority
from datastore.testing.procs import free_port

URL_FLAGS = ["--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
             "--initial-advertise-peer-urls", "--listen-metrics-urls", "--initial-cluster"]
FILE_FLAGS = ["--cert-file", "--key-file", "--trusted-ca-file"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_serve_arguments(p)
    return p


def _read_config(argv: list[str]) -> None:
    try:
        ns = _parser().parse_args(argv)
    except (argparse.ArgumentError, SystemExit):  # argparse's own one-line usage error
        return
    try:
        prepare_tls(config_from_args(ns))
    except (ValueError, OSError) as e:
        assert "\n" not in str(e) and str(e), repr(e)


url_ish = st.one_of(
    st.text(max_size=40),
    st.builds(lambda s, h, p: f"{s}://{h}:{p}", st.sampled_from(["http", "https", "unix", "ftp", ""]),
              st.text(st.characters(codec="ascii"), max_size=12), st.text(max_size=8)),
    st.builds(lambda n, u: f"{n}={u}", st.text(max_size=6), st.text(max_size=30)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(URL_FLAGS), value=url_ish)
def test_any_url_flag_value_is_refused_cleanly(flag: str, value: str, tmp_path: Path) -> None:
    _read_config(["--data-dir", str(tmp_path / "d"), flag, value])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.one_of(
    st.text(max_size=60),
    st.builds(lambda m, k, t: f"jwt,sign-method={m},priv-key={k},ttl={t}",
              st.sampled_from(["RS256", "ES256", "EdDSA", "HS256", "none", "", "x"]),
              st.sampled_from(["/nonexistent", "/dev/null", "/etc/hostname", "/", ""]),
              st.text(max_size=10))))
def test_any_auth_token_value_is_refused_cleanly(option: str, tmp_path: Path) -> None:
    _read_config(["--data-dir", str(tmp_path / "d"), "--auth-token", option])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(FILE_FLAGS), content=st.binary(max_size=300),
       pem=st.sampled_from([b"", b"-----BEGIN CERTIFICATE-----\n", b"-----BEGIN PRIVATE KEY-----\n"]))
def test_any_tls_file_content_is_refused_cleanly(which: str, content: bytes, pem: bytes,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("tls")
    ca = CertAuthority(d / "pki")
    good = ca.issue("server")
    files = {"--cert-file": good.cert, "--key-file": good.key, "--trusted-ca-file": ca.cert}
    bad = d / "bad.pem"
    bad.write_bytes(pem + content)
    files[which] = bad
    url = f"https://127.0.0.1:{free_port()}"
    _read_config(["--data-dir", str(d / "data"), "--listen-client-urls", url,
                  "--advertise-client-urls", url,
                  *[x for f, p in files.items() for x in (f, str(p))]])


def _serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "datastore", "serve", "--data-dir",
                           str(tmp_path / "d"), *flags], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = CertAuthority(d)
    a, b = ca.issue("a"), ca.issue("b")
    (d / "garbage").write_bytes(b"\x00not pem at all\n")
    return {"ca": ca.cert, "cert": a.cert, "key": a.key, "other-key": b.key, "garbage": d / "garbage"}


def _https(port: int) -> list[str]:
    url = f"https://127.0.0.1:{port}"
    return ["--listen-client-urls", url, "--advertise-client-urls", url]


CASES = {
    "garbage certificate": (lambda k, p: [*_https(p), "--cert-file", k["garbage"], "--key-file", k["key"]],
                            "tls: failed to find any PEM data in certificate input"),
    "garbage key": (lambda k, p: [*_https(p), "--cert-file", k["cert"], "--key-file", k["garbage"]],
                    "tls: failed to find any PEM data in key input"),
    "key of another certificate": (lambda k, p: [*_https(p), "--cert-file", k["cert"],
                                                 "--key-file", k["other-key"]],
                                   "tls: private key does not match public key"),
    "garbage CA": (lambda k, p: [*_https(p), "--cert-file", k["cert"], "--key-file", k["key"],
                                 "--trusted-ca-file", k["garbage"]], "no PEM certificates"),
    "garbage CRL": (lambda k, p: [*_https(p), "--cert-file", k["cert"], "--key-file", k["key"],
                                  "--client-crl-file", k["garbage"]], "x509: malformed crl"),
    "missing peer CRL": (lambda k, p: ["--listen-peer-urls", f"https://127.0.0.1:{p}",
                                       "--peer-cert-file", k["cert"], "--peer-key-file", k["key"],
                                       "--peer-crl-file", "/nonexistent.crl"],
                         "open /nonexistent.crl: no such file or directory"),
    "missing file": (lambda k, p: [*_https(p), "--cert-file", "/nonexistent", "--key-file", k["key"]],
                     "/nonexistent"),
    "bad port": (lambda k, p: ["--listen-client-urls", "http://127.0.0.1:abc"],
                 "--listen-client-urls: parse 'http://127.0.0.1:abc': invalid port"),
    "bad IPv6 host": (lambda k, p: ["--listen-peer-urls", "http://[::1"], "missing ']' in host"),
    "bad initial cluster": (lambda k, p: ["--initial-cluster", "default=http://127.0.0.1:2380,x"],
                            "--initial-cluster: 'x' is not NAME=URL"),
    "bad initial cluster URL": (lambda k, p: ["--initial-cluster", "default=http://127.0.0.1:99999"],
                                "--initial-cluster: parse"),
    "bad sign method": (lambda k, p: ["--auth-token", f"jwt,sign-method=XX1,priv-key={k['key']}"],
                        "--auth-token: auth: invalid auth options"),
    "bad key file": (lambda k, p: ["--auth-token", f"jwt,sign-method=RS256,priv-key={k['garbage']}"],
                     "--auth-token: invalid key: Key must be a PEM encoded"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_serve_refuses_with_one_line(case: str, pki: dict[str, Path], tmp_path: Path) -> None:
    flags, says = CASES[case]
    r = _serve(tmp_path, *map(str, flags(pki, free_port())))
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("datastore: error: ") and says in last, r.stderr


def test_serve_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        r = _serve(tmp_path, "--listen-client-urls", url, "--advertise-client-urls", url)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"datastore: error: listen tcp {url[7:]}: bind:")
