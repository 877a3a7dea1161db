"""Progress where people wait: ``datastore snapshot restore`` and ``datastore bench`` draw a
live display on a terminal (a real pseudo-terminal here), print plain text with no control
characters when stderr is a pipe, end with one summary line on stderr either way, leave
stdout's data as it was, and end quietly when their reader goes away (``| head``).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import ETCDCTL_BIN, ServerProc, datastore_proc, etcdctl

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
# ESC (ANSI sequences), CR (redrawn lines) and the other C0 controls but tab and newline
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
RESTORED = re.compile(r"^restored ([\d,]+) key revisions, 1 lease \(revision ([\d,]+)\) from \S+ "
                      r"into (\S+) in [\d.]+ s$", re.MULTILINE)
BENCH = re.compile(r"^put: ([\d,]+) requests to \S+ in [\d.]+ s \([\d,]+/s, p99 [\d.]+ ms, "
                   r"0 errors\)$", re.MULTILINE)
KEYS = 3000


def run_in_pty(argv: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a new pseudo-terminal; its output and
    exit status."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, cwd=ROOT,
                            env=env, close_fds=True)
    os.close(follower)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    return rc, out.decode(errors="replace")


def plain(text: str) -> str:
    """What a terminal leaves on screen, roughly: escape sequences out, CRLF as LF."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n")


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    p = datastore_proc(tmp_path_factory.mktemp("progress"), name="p0").start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def snapshot(member: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path(ETCDCTL_BIN).exists():
        pytest.skip("etcdctl not installed")
    with grpc.insecure_channel(member.endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        lease = rpc_pb2_grpc.LeaseStub(ch).LeaseGrant(pb.LeaseGrantRequest(TTL=600), timeout=10)
        for i in range(KEYS):
            kv.Put(pb.PutRequest(key=b"k/%05d" % i, value=b"v" * 64,
                                 lease=lease.ID if i == 0 else 0), timeout=10)
    snap = tmp_path_factory.mktemp("snap") / "snap.db"
    etcdctl(member.endpoint, "snapshot", "save", str(snap))
    return snap


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run with stdout and stderr on pipes; decoded without newline translation (text
    mode would turn a CR into a newline and hide it)."""
    r = subprocess.run(argv, capture_output=True, timeout=120, cwd=ROOT)
    return subprocess.CompletedProcess(argv, r.returncode, r.stdout.decode(), r.stderr.decode())


def restore_argv(snap: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "datastore", "snapshot", "restore", str(snap),
            "--data-dir", str(data), *extra]


def test_restore_on_a_terminal(snapshot: Path, tmp_path: Path) -> None:
    rc, out = run_in_pty(restore_argv(snapshot, tmp_path / "data"))
    assert rc == 0, out
    assert "\x1b[" in out, out  # a live display was drawn ...
    assert "restoring" in out or "checking the snapshot's hash" in out, out
    screen = plain(out)
    m = RESTORED.search(screen)  # ... and the summary line is what stays
    assert m, screen
    assert int(m.group(1).replace(",", "")) == KEYS
    assert int(m.group(2).replace(",", "")) == KEYS + 1  # KEYS puts after the first revision
    assert m.group(3) == str(tmp_path / "data")
    assert "Traceback" not in out


def test_restore_without_a_terminal(snapshot: Path, tmp_path: Path) -> None:
    r = run(restore_argv(snapshot, tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # nothing but data ever goes to stdout, and restore has none
    assert not CONTROL.search(r.stderr), repr(r.stderr)
    lines = r.stderr.splitlines()
    assert RESTORED.fullmatch(lines[-1]), lines  # the last line says what it did
    # progress lines (here every 1 ms, so there are some): plain text, no control characters
    r = run(restore_argv(snapshot, tmp_path / "data2", "--progress-interval", "0.001"))
    assert r.returncode == 0 and not CONTROL.search(r.stderr), repr(r.stderr)
    assert re.search(r"^\[restoring\] \d+% [\d,]+ key revisions \([\d.]+ s\)$", r.stderr,
                     re.MULTILINE), r.stderr
    assert RESTORED.fullmatch(r.stderr.splitlines()[-1])


def bench_argv(member: ServerProc, *extra: str) -> list[str]:
    return [sys.executable, "-m", "datastore", "bench", "--endpoints", member.endpoint,
            "--workload", "put", "--clients", "4", "--conns", "1", *extra]


def test_bench_on_a_terminal(member: ServerProc) -> None:
    # long enough for the display to be redrawn a few times (it redraws every 0.25 s)
    rc, out = run_in_pty(bench_argv(member, "--duration", "2"))
    assert rc == 0, out
    assert "\x1b[" in out and "ops" in out and "put" in out, out
    screen = plain(out)
    assert "throughput" in screen  # the summary on stdout, as before
    assert BENCH.search(screen), screen  # and the line on stderr
    assert "Traceback" not in out


def test_bench_without_a_terminal(member: ServerProc) -> None:
    r = run(bench_argv(member, "--total", "600", "--json", "--progress-interval", "0.05"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ops"] == 600  # stdout is the data, only
    assert not CONTROL.search(r.stdout + r.stderr), repr(r.stderr)
    assert re.search(r"^\[put\] \d+% [\d,]+ ops", r.stderr, re.MULTILINE), r.stderr  # progress lines
    last = r.stderr.splitlines()[-1]
    assert BENCH.fullmatch(last) and last.startswith("put: 600 requests"), r.stderr
    r = run(bench_argv(member, "--total", "100", "--json", "-q"))
    assert r.returncode == 0 and r.stderr == "", r.stderr  # -q: not even the summary line


@pytest.mark.parametrize("module", ["datastore", "datastore.bench"])
def test_a_reader_that_goes_away_ends_it_quietly(member: ServerProc, module: str) -> None:
    """``datastore bench ... | head``: the pipe is closed before the output is written."""
    argv = [sys.executable, "-m", module, *bench_argv(member, "--total", "50")[3:]]
    if module == "datastore.bench":
        argv.remove("bench")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    rc = p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc == 141, (rc, err)
