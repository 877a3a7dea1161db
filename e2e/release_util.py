"""The previous release, built from its git tag, for mixed-version tests.

``previous_release()`` extracts the tagged commit (``git archive``) into a cache outside
the checkout (``~/.cache/datastore/releases/<commit>/``), makes a venv of its own and
``pip install -e`` the tree into it, once per commit: a second run finds it ready. When the
release's dependencies are the ones this checkout declares, the venv borrows this
interpreter's installed packages (a path entry, not a second download) and installs the
tree with ``--no-deps``; otherwise pip installs them.

The commit is pinned next to its tag, so a clone without tags still finds it; a checkout
that does not hold the commit at all (a shallow clone) skips the tests that need it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from datastore.testing.procs import ServerProc

ROOT = Path(__file__).resolve().parents[1]
PREVIOUS_TAG = "v0.14.0"
PREVIOUS_COMMIT = "fbde2dd362e2e40bf5f0d2c2dc07a43e0b3c66ea"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "datastore" / "releases"


@dataclass(frozen=True)
class Release:
    tag: str
    commit: str
    datastore: Path  # the release's ``datastore`` console script

    def use(self, proc: ServerProc) -> ServerProc:
        """Run ``proc`` (built by ``datastore_proc``) on this release from its next launch."""
        i = proc.argv.index("serve")
        proc.argv[:i] = [str(self.datastore)]
        # Its own package, never this checkout's (the console script does not put the
        # working directory on sys.path; an inherited PYTHONPATH would).
        proc.env["PYTHONPATH"] = ""
        return proc


def use_head(proc: ServerProc) -> ServerProc:
    """Run ``proc`` on this checkout again (as ``datastore_proc`` made it)."""
    i = proc.argv.index("serve")
    proc.argv[:i] = [sys.executable, "-m", "datastore"]
    proc.env.pop("PYTHONPATH", None)
    return proc


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=False)


def _dependencies(pyproject: str) -> list[str]:
    m = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.S | re.M)
    body = re.sub(r"#.*", "", m.group(1)) if m else ""
    return sorted(re.findall(r'"([^"]+)"', body))


def _build(dest: Path, commit: str) -> Path:
    """Extract ``commit`` and install it into a venv under ``dest``; returns the script."""
    src, venv = dest / "src", dest / "venv"
    shutil.rmtree(dest, ignore_errors=True)
    src.mkdir(parents=True)
    with tempfile.TemporaryFile() as tar:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                       stdout=tar, check=True)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as tf:
            tf.extractall(src, filter="data")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    ours = _dependencies((ROOT / "pyproject.toml").read_text())
    theirs = _dependencies((src / "pyproject.toml").read_text())
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", str(src)]
    if theirs == ours:
        site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                               "['purelib'])"], capture_output=True, text=True, check=True)
        shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (Path(site.stdout.strip()) / "zz-shared-deps.pth").write_text("\n".join(sorted(shared)) + "\n")
        pip.append("--no-deps")
    subprocess.run(pip, check=True)
    return venv / "bin" / "datastore"


def previous_release() -> Release:
    """The previous release, built (or found in the cache) and ready to run."""
    if _git("cat-file", "-e", f"{PREVIOUS_COMMIT}^{{commit}}").returncode != 0:
        pytest.skip(f"this checkout does not hold {PREVIOUS_TAG} ({PREVIOUS_COMMIT[:12]}): "
                    "fetch the full history (git fetch --unshallow --tags)")
    tagged = _git("rev-parse", "-q", "--verify", f"{PREVIOUS_TAG}^{{commit}}")
    if tagged.returncode == 0:
        assert tagged.stdout.decode().strip() == PREVIOUS_COMMIT, (
            f"{PREVIOUS_TAG} names another commit than the one pinned here")
    # keyed by the commit and the interpreter whose packages a shared venv borrows
    key = hashlib.sha256(f"{PREVIOUS_COMMIT}:{sys.prefix}".encode()).hexdigest()[:16]
    dest = CACHE / f"{PREVIOUS_TAG}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{key}.lock", "w") as lock:  # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        ready = dest / "READY"
        script = dest / "venv" / "bin" / "datastore"
        if not ready.exists() or not script.exists():
            script = _build(dest, PREVIOUS_COMMIT)
            ready.write_text(PREVIOUS_COMMIT + "\n")
    return Release(PREVIOUS_TAG, PREVIOUS_COMMIT, script)
