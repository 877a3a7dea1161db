"""The oracles are the versions the tests were written against.

The e2e tests compare the datastore with real etcd and drive it with the real etcdctl:
Debian's 3.4.23 (whatever ``etcd`` / ``etcdctl`` are on PATH) and etcd 3.6.16 built from
pinned Go modules (``datastore.testing.refs``). Another version answers differently in
ways the tests encode (error strings, flags, defaults), so a changed oracle fails here,
once and by name, instead of as odd differences elsewhere.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from datastore.testing import refs
from datastore.testing.procs import ETCD_BIN, ETCDCTL_BIN

DEBIAN_ETCD = "3.4.23"
BUILT_ETCD = "3.6.16"
BUILT = "<built etcd>"  # resolved when the test runs, not at collection


def _version(argv: list[str], pattern: str) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    m = re.search(pattern, out)
    assert m, f"{argv}: no version in {out!r}"
    return m.group(1)


@pytest.mark.parametrize(("what", "argv", "pattern", "want", "fix"), [
    ("etcd on PATH", [ETCD_BIN, "--version"], r"etcd Version: (\S+)", DEBIAN_ETCD,
     "install Debian's etcd-server 3.4.23 (bookworm), or update the tests for the new version"),
    ("etcdctl on PATH", [ETCDCTL_BIN, "version"], r"etcdctl version: (\S+)", DEBIAN_ETCD,
     "install Debian's etcd-client 3.4.23 (bookworm), or update the tests for the new version"),
    ("built etcd", [BUILT, "--version"], r"etcd Version: (\S+)", BUILT_ETCD,
     "python3 scripts/build_refs.py etcd (tools/refs pins the version)"),
])
def test_oracle_version(what: str, argv: list[str], pattern: str, want: str, fix: str) -> None:
    argv = [str(refs.binary("etcd")) if a == BUILT else a for a in argv]
    got = _version(argv, pattern)
    assert got == want, (f"{what} ({argv[0]}) is etcd {got}; the tests were written against "
                         f"{want}: {fix}")
