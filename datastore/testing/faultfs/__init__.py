"""Power-loss and disk-fault testing for real server processes (LD_PRELOAD shim).

Why a shim and not FUSE: the shim needs only gcc (compiled once per test session,
cached by source hash), no mount privileges and no fuse package, and it sees exactly the
calls RocksDB makes (write/pwrite/writev, fsync/fdatasync, rename, link, unlink). See
``faultfs.c`` for the durability model: content survives only up to the last successful
fsync/fdatasync of the file; namespace operations are durable at once (LazyFS's model).

Usage::

    so = build_shim(tmp_path_factory.getbasetemp() / "faultfs")
    disk = FaultDisk(proc.data_dir, tmp_path / "shadow", so)
    proc.env.update(disk.env())            # before launch
    ... proc.kill(); disk.pull_plug()      # what a machine finds after losing power
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("faultfs.c")
_TMP_SUFFIX = ".faultfs-tmp"


def build_shim(build_dir: Path) -> Path:
    """Compile the shim with gcc into ``build_dir`` (once per source version) and return it."""
    src = SOURCE.read_bytes()
    out = Path(build_dir) / f"faultfs-{hashlib.sha256(src).hexdigest()[:12]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("faultfs needs a C compiler: install gcc (apt-get install gcc)")
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wno-format-truncation",
                    "-o", str(tmp), str(SOURCE), "-ldl", "-lpthread"], check=True)
    tmp.replace(out)  # atomic: concurrent sessions never load a half-written .so
    return out


@dataclass
class FaultDisk:
    """The disk one member's data dir lives on: what is durable, and the faults it injects."""

    data_dir: Path
    shadow: Path  # the durable image: what survives a power loss
    shim: Path

    @property
    def enospc_flag(self) -> Path:
        return self.shadow.parent / f"{self.shadow.name}.enospc"

    @property
    def eio_flag(self) -> Path:
        return self.shadow.parent / f"{self.shadow.name}.eio"

    @property
    def stall_flag(self) -> Path:
        """While this file exists, fsync/fdatasync under the data dir block."""
        return self.shadow.parent / f"{self.shadow.name}.stall"

    def env(self, eio_after: int | None = None) -> dict[str, str]:
        """Environment for the member's process (merge into ``ServerProc.env``).

        ``eio_after``: once :meth:`arm_eio` is called, that many more fsync/fdatasync calls
        succeed and every later one fails with EIO.
        """
        self.shadow.mkdir(parents=True, exist_ok=True)
        env = {"LD_PRELOAD": str(self.shim), "FAULTFS_ROOT": str(self.data_dir.resolve()),
               "FAULTFS_SHADOW": str(self.shadow.resolve()),
               "FAULTFS_ENOSPC_FLAG": str(self.enospc_flag.resolve()),
               "FAULTFS_STALL_FLAG": str(self.stall_flag.resolve())}
        if eio_after is not None:
            env["FAULTFS_EIO_AFTER"] = str(eio_after)
            env["FAULTFS_EIO_FLAG"] = str(self.eio_flag.resolve())
        return env

    def arm_eio(self) -> None:
        """Start counting towards the EIO failure set up with ``env(eio_after=N)``."""
        self.eio_flag.touch()

    def fill(self) -> None:
        """The disk is full from now on: writes under the data dir fail with ENOSPC."""
        self.enospc_flag.touch()

    def free(self) -> None:
        """Space is back."""
        self.enospc_flag.unlink(missing_ok=True)

    def pull_plug(self) -> dict[str, int]:
        """Rewrite the data dir to its durable image. Call only once its process is dead.

        Every file takes the content it had at its last successful sync; a file never
        synced becomes empty. Returns counts for the log: files restored / emptied.
        """
        restored = emptied = 0
        for dirpath, _, files in os.walk(self.data_dir):
            for f in files:
                real = Path(dirpath) / f
                durable = self.shadow / real.relative_to(self.data_dir)
                if durable.is_file():
                    shutil.copyfile(durable, real)
                    restored += 1
                else:
                    real.write_bytes(b"")
                    emptied += 1
        for tmp in self.shadow.rglob(f"*{_TMP_SUFFIX}"):
            tmp.unlink()
        return {"restored": restored, "emptied": emptied}
