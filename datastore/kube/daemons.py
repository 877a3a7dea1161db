"""Processes that outlive ``datastore kube up``: started in their own session, recorded by
pid (with their start time, so a recycled pid is never signalled) and stopped by ``down``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass
class Daemon:
    name: str
    argv: list[str]
    log: str
    pid: int = 0
    started: int = 0  # _start_time(pid) when we launched it

    @classmethod
    def launch(cls, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> Daemon:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                    start_new_session=True)
        return cls(name, argv, str(log), proc.pid, _start_time(proc.pid) or 0)

    def alive(self) -> bool:
        if not self.pid or _start_time(self.pid) != self.started:
            return False
        try:  # a zombie child of ours (same start time) has exited too
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; only the process we started."""
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            _reap(self.pid)
            time.sleep(0.05)  # poll interval of the exit check
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            while self.alive():
                _reap(self.pid)
                time.sleep(0.02)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
