"""``datastore kube up|down`` as a user runs it: a second up reuses the data, up on a
running directory changes nothing, down stops every process, and bad flags get one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from datastore.kube.controlplane import ControlPlane


def _ds(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "datastore", "kube", *args],
                          capture_output=True, text=True, timeout=timeout)


def _kubectl(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(d / "bin" / "kubectl"), f"--kubeconfig={d / 'kubeconfig'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_up_down_up_keeps_the_data(tmp_path: Path) -> None:
    d = tmp_path / "plane"
    first = _ds("up", "--dir", str(d), "--nodes", "1")
    assert first.returncode == 0, first.stderr
    assert f"next: KUBECONFIG={d / 'kubeconfig'} kubectl get nodes" in first.stdout
    assert (d / "endpoints").read_text().startswith("http://127.0.0.1:")
    try:
        assert _kubectl(d, "create", "configmap", "kept", "--from-literal=a=1").returncode == 0
        again = _ds("up", "--dir", str(d))
        assert again.returncode == 0 and "already up" in again.stdout, again
        daemons = ControlPlane.load(d).daemons  # type: ignore[union-attr]
        assert daemons and all(x.alive() for x in daemons)
    finally:
        down = _ds("down", "--dir", str(d))
    assert down.returncode == 0, down.stderr
    assert not any(x.alive() for x in daemons)  # (a zombie no one reaped counts as gone)
    second = _ds("up", "--dir", str(d), "--nodes", "1")
    try:
        assert second.returncode == 0, second.stderr
        got = _kubectl(d, "get", "configmap", "kept", "-o", "jsonpath={.data.a}")
        assert got.stdout == "1", got
    finally:
        _ds("down", "--dir", str(d))


def test_bad_flags_get_one_line(tmp_path: Path) -> None:
    kine = _ds("up", "--dir", str(tmp_path / "k"), "--backend", "kine", "--members", "3")
    assert kine.returncode == 1
    assert kine.stderr == ("datastore kube: error: kine runs as one process: "
                           "use --members 1 with --backend kine\n")
    nothing = _ds("down", "--dir", str(tmp_path / "never"))
    assert nothing.returncode == 1 and "nothing was started" in nothing.stderr
    assert "Traceback" not in kine.stderr + nothing.stderr


def test_restore_from_refuses_what_it_cannot_restore(tmp_path: Path) -> None:
    snap = tmp_path / "garbage.db"
    snap.write_bytes(b"not a snapshot" * 100)
    kine = _ds("up", "--dir", str(tmp_path / "k"), "--backend", "kine", "--restore-from", str(snap))
    assert kine.returncode == 1
    assert kine.stderr == ("datastore kube: error: --restore-from takes an etcd snapshot: "
                           "use --backend datastore or etcd\n")
    absent = _ds("up", "--dir", str(tmp_path / "a"), "--restore-from", str(tmp_path / "nope.db"))
    assert absent.returncode == 1
    assert f"--restore-from {tmp_path / 'nope.db'}: no such file" in absent.stderr
    used = tmp_path / "used"
    (used / "storage" / "ds0").mkdir(parents=True)
    (used / "storage" / "ds0" / "keep").write_text("data")
    full = _ds("up", "--dir", str(used), "--restore-from", str(snap))
    assert full.returncode == 1
    assert "already holds data: run `up` without --restore-from" in full.stderr
    assert (used / "storage" / "ds0" / "keep").read_text() == "data"
    # A damaged file: the restore's own message, and no member data left behind, so the
    # same command can run again once the file is right.
    bad = tmp_path / "bad"
    damaged = _ds("up", "--dir", str(bad), "--restore-from", str(snap))
    assert damaged.returncode == 1
    assert "restoring ds0 failed" in damaged.stderr and "snapshot" in damaged.stderr, damaged.stderr
    assert not (bad / "storage" / "ds0").exists()
    assert not any(x.alive() for x in ControlPlane.load(bad).daemons)  # type: ignore[union-attr]
    for r in (kine, absent, full, damaged):
        assert "Traceback" not in r.stderr, r.stderr


def test_a_reader_that_goes_away_does_not_stop_the_plane(tmp_path: Path) -> None:
    """``datastore kube up | head -2``: no BrokenPipeError traceback, and the plane is up."""
    d = tmp_path / "piped"
    proc = subprocess.Popen([sys.executable, "-m", "datastore", "kube", "up", "--dir", str(d),
                             "--nodes", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.close()  # what head does after its lines
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err
        daemons = ControlPlane.load(d).daemons  # type: ignore[union-attr]
        assert len(daemons) == 5 and all(x.alive() for x in daemons)
    finally:
        _ds("down", "--dir", str(d))
