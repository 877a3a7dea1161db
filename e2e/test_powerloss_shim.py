"""The faultfs shim itself: what it keeps, drops and injects (a child Python process).

If the model were wrong (e.g. kept unsynced data), the power-loss tests could not fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from datastore.testing.faultfs import FaultDisk, build_shim

CHILD = r"""
import errno, os, sys
d = sys.argv[1]
os.makedirs(d + "/sub", exist_ok=True)
def put(name, data, sync):
    fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, data)
    if sync:
        os.fsync(fd)
    return fd
if sys.argv[2] == "plain":
    os.close(put("synced", b"durable", True))
    fd = put("partly", b"first", True); os.write(fd, b"+lost"); os.close(fd)
    os.close(put("never", b"lost", False))
    os.close(put("sub/tmp", b"renamed", True)); os.rename(d + "/sub/tmp", d + "/sub/final")
    os.close(put("gone", b"x", True)); os.unlink(d + "/gone")
if sys.argv[2] == "eio":
    fd = put("eio", b"a", True)  # the 1 sync allowed after arming
    try:
        os.fsync(fd); print("no-eio")
    except OSError as e:
        print("eio" if e.errno == errno.EIO else e)
if sys.argv[2] == "enospc":
    open(sys.argv[3], "w").close()  # disk full from here on
    try:
        os.write(os.open(d + "/full", os.O_WRONLY | os.O_CREAT, 0o600), b"x"); print("wrote")
    except OSError as e:
        print("enospc" if e.errno == errno.ENOSPC else e)
"""


@pytest.fixture
def disk(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> FaultDisk:
    so = build_shim(tmp_path_factory.getbasetemp() / "faultfs")
    return FaultDisk(tmp_path / "data", tmp_path / "durable", so)


def run(disk: FaultDisk, mode: str, eio_after: int | None = None) -> str:
    env = disk.env(eio_after=eio_after)
    if eio_after is not None:
        disk.arm_eio()
    out = subprocess.run([sys.executable, "-c", CHILD, str(disk.data_dir), mode,
                          str(disk.enospc_flag)], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


def test_pull_plug_keeps_only_synced_content(disk: FaultDisk) -> None:
    run(disk, "plain")
    d = disk.data_dir
    assert (d / "partly").read_bytes() == b"first+lost"  # the page cache, before the plug
    disk.pull_plug()
    assert (d / "synced").read_bytes() == b"durable"
    assert (d / "partly").read_bytes() == b"first"
    assert (d / "never").read_bytes() == b""
    assert (d / "sub/final").read_bytes() == b"renamed"
    assert not (d / "gone").exists() and not (disk.shadow / "gone").exists()


def test_injects_eio_and_enospc(disk: FaultDisk) -> None:
    assert run(disk, "eio", eio_after=1) == "eio"
    assert run(disk, "enospc") == "enospc"
    disk.free()
