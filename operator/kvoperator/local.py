"""LocalPlatform: members are real ``python -m datastore serve`` processes on 127.0.0.1.

Member ``<name>-<i>`` listens on client port ``P+10i``, peer port ``P+10i+1`` and
metrics port ``P+10i+2`` and keeps its data in ``DIR/<name>-<i>``. Processes run in
their own session, so they outlive the operator; a restarted operator finds them again
by their command line (``--data-dir DIR/<name>-<i>``), not by remembered pids, so a
crash between starting a process and recording it leaves nothing unknown behind.
``DIR/<name>-<i>.json`` keeps only the restart count (crash-loop detection);
``DIR/status.yaml`` gets the status the operator would write to the CR.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from kvoperator import spec as specmod
from kvoperator.planner import Action, Observed, Phase, Workload, is_live
from kvoperator.spec import ClusterSpec

log = logging.getLogger("kvoperator.local")
BACKOFF_BASE_S = 0.5  # a member that exited is restarted after 0.5 s, 1 s, 2 s, ... (max 10 s)
BACKOFF_MAX_S = 10.0
STOP_TIMEOUT_S = 10.0
DEFAULT_CRD = Path(__file__).resolve().parents[2] / "manifests" / "crd" / "datastoreclusters.yaml"


def _proc_args(pid: int) -> list[str] | None:
    """The argv of a live (non-zombie) process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except (OSError, IndexError):
        return None


class LocalPlatform:
    def __init__(self, manifest: Path, workdir: Path, base_port: int,
                 python: str = sys.executable, extra_args: tuple[str, ...] = (),
                 crd: Path | None = None) -> None:
        self.manifest = Path(manifest)
        self.workdir = Path(workdir).resolve()
        self.base_port = base_port
        self.python = python
        self.extra_args = extra_args
        self.spec: ClusterSpec | None = None
        self._spec_key = ""  # sha256 of the manifest last read
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # pid -> child we started
        self._status: dict[str, Any] | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        crd = crd if crd is not None else DEFAULT_CRD
        # Validate edits as the API server would, when the CRD is at hand (a checkout).
        self.schema = specmod.crd_schema(yaml.safe_load(crd.read_text())) if crd.exists() else None

    # ---- the manifest -------------------------------------------------------------------
    async def load_spec(self) -> ClusterSpec | None:
        """Re-read the manifest when it changed; keep the last good spec on a bad edit."""
        try:
            raw = self.manifest.read_bytes()  # small: compare contents, not mtimes (coarse clocks)
        except OSError as e:
            log.warning("cannot read the manifest", extra={"manifest": str(self.manifest),
                                                           "error": str(e)})
            return self.spec
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._spec_key:
            return self.spec
        self._spec_key = digest
        try:
            obj = yaml.safe_load(raw) or {}
            errors = specmod.schema_errors(obj, self.schema) if self.schema else []
            if errors:
                raise specmod.SpecError("; ".join(errors))
            spec = specmod.parse(obj)
        except (OSError, yaml.YAMLError, specmod.SpecError) as e:
            log.warning("manifest not valid; keeping the last good one (fix the file)",
                        extra={"manifest": str(self.manifest), "error": str(e)})
            return self.spec
        if not spec.generation:  # a local file has no API server to count generations
            spec = _with_generation(spec, self._generation(digest))
        if self.spec is None or spec != self.spec:
            log.info("manifest loaded", extra={"manifest": str(self.manifest), "size": spec.size,
                                               "generation": spec.generation})
        self.spec = spec
        return spec

    def _generation(self, digest: str) -> int:
        """metadata.generation as the API server would count it: +1 per changed manifest."""
        path = self.workdir / ".manifest-generation.json"
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {"digest": "", "generation": 0}
        if state["digest"] != digest:
            state = {"digest": digest, "generation": state["generation"] + 1}
            _write_atomic(path, json.dumps(state).encode())
        return int(state["generation"])

    # ---- slots --------------------------------------------------------------------------
    def _name(self, i: int) -> str:
        assert self.spec is not None
        return f"{self.spec.name}-{i}"

    def data_dir(self, i: int) -> Path:
        return self.workdir / self._name(i)

    def client_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base_port + 10 * i}"

    def peer_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base_port + 10 * i + 1}"

    def metrics_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base_port + 10 * i + 2}"

    def ordinal_of(self, peer_url: str) -> int | None:
        u = urlparse(peer_url)
        if u.hostname != "127.0.0.1" or u.port is None:
            return None
        off = u.port - self.base_port - 1
        return off // 10 if off >= 0 and off % 10 == 0 else None

    def _state_path(self, i: int) -> Path:
        return self.workdir / f"{self._name(i)}.json"

    def _read_state(self, i: int) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_path(i).read_text()))
        except (OSError, ValueError):
            return {}

    def _write_state(self, i: int, state: Mapping[str, Any]) -> None:
        _write_atomic(self._state_path(i), json.dumps(dict(state)).encode())

    def pids(self) -> dict[int, int]:
        """Ordinal -> pid of our live member processes, found by their --data-dir."""
        for child in list(self._children.values()):
            if child.poll() is not None:  # reap, so an exited child is not a zombie
                self._children.pop(child.pid, None)
        prefix = str(self.workdir / self._name(0))[: -1]  # ".../<name>-"
        out: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            args = _proc_args(int(entry))
            if not args or "--data-dir" not in args or "serve" not in args:
                continue
            d = args[args.index("--data-dir") + 1] if args.index("--data-dir") + 1 < len(args) else ""
            tail = d[len(prefix):] if d.startswith(prefix) else ""
            if tail.isdigit():
                out[int(tail)] = int(entry)
        return out

    async def workloads(self) -> dict[int, Workload]:
        if self.spec is None:
            return {}
        pids = self.pids()
        prefix = self._name(0)[:-1]
        ords = set(pids)
        for p in self.workdir.iterdir():
            stem = p.name[: -len(".json")] if p.name.endswith(".json") else p.name
            if stem.startswith(prefix) and stem[len(prefix):].isdigit():
                ords.add(int(stem[len(prefix):]))
        out: dict[int, Workload] = {}
        now = time.time()
        for i in sorted(ords):
            state = self._read_state(i)
            restarts = int(state.get("restarts", 0))
            has_data = self.data_dir(i).is_dir()
            if i in pids:
                phase = Phase.RUNNING
            elif state.get("started"):
                if "exited_seen" not in state:
                    state["exited_seen"] = now
                    self._write_state(i, state)
                # Exited: restarted once the back-off (growing with the restarts) has passed.
                phase = Phase.PENDING if now - state["exited_seen"] < _backoff(restarts) else Phase.EXITED
            else:
                phase = Phase.MISSING
            out[i] = Workload(i, phase, restarts, has_data)
        return out

    # ---- actions ------------------------------------------------------------------------
    def argv(self, i: int, initial_cluster: str, state: str) -> list[str]:
        assert self.spec is not None
        c, p = self.client_url(i), self.peer_url(i)
        return [self.python, "-m", "datastore", "serve", "--name", self._name(i),
                "--data-dir", str(self.data_dir(i)),
                "--listen-client-urls", c, "--advertise-client-urls", c,
                "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                "--listen-metrics-urls", self.metrics_url(i),
                "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", self.spec.name, *self.extra_args]

    async def start_member(self, ordinal: int, initial_cluster: str, state: str) -> None:
        if ordinal in self.pids():
            return  # already running: starting is idempotent
        prev = self._read_state(ordinal)
        restart = bool(prev.get("started"))  # started before and not healthy since (sync resets it)
        child = self._spawn(ordinal, self.argv(ordinal, initial_cluster, state))
        self._write_state(ordinal, {"started": time.time(), "pid": child.pid,
                                    "restarts": int(prev.get("restarts", 0)) + 1 if restart else 0})
        log.info("started member process", extra={"member": self._name(ordinal), "pid": child.pid,
                                                  "initial_cluster_state": state,
                                                  "initial_cluster": initial_cluster})

    def _spawn(self, ordinal: int, argv: list[str]) -> subprocess.Popen[bytes]:
        """A child in its own session (it outlives the operator), logging to DIR/<name>-<i>.log."""
        with open(self.workdir / f"{self._name(ordinal)}.log", "ab") as logf:
            child = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._children[child.pid] = child
        return child

    async def delete_member(self, ordinal: int, delete_data: bool) -> None:
        pid = self.pids().get(ordinal)
        if pid is not None:
            await asyncio.to_thread(self._stop_pid, pid)
        self._state_path(ordinal).unlink(missing_ok=True)
        if delete_data:
            shutil.rmtree(self.data_dir(ordinal), ignore_errors=True)
        log.info("deleted member process", extra={"member": self._name(ordinal), "pid": pid,
                                                  "data_deleted": delete_data})

    def _stop_pid(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _proc_args(pid) is not None:
            child = self._children.get(pid)
            if child is not None and child.poll() is not None:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)  # poll interval of the exit condition above
        self._children.pop(pid, None)

    async def sync(self, o: Observed) -> None:
        """A member that became healthy starts its crash-loop count again."""
        for m in o.members or ():
            if m.ordinal is not None and is_live(o, m):
                state = self._read_state(m.ordinal)
                if state.get("restarts") or "exited_seen" in state:
                    state["restarts"] = 0
                    state.pop("exited_seen", None)
                    self._write_state(m.ordinal, state)

    # ---- status -------------------------------------------------------------------------
    @property
    def status_path(self) -> Path:
        return self.workdir / "status.yaml"

    async def previous_status(self) -> Mapping[str, Any] | None:
        if self._status is None:
            try:
                self._status = yaml.safe_load(self.status_path.read_text()) or None
            except (OSError, yaml.YAMLError):
                return None
        return self._status

    async def publish_status(self, status: Mapping[str, Any]) -> None:
        self._status = dict(status)
        _write_atomic(self.status_path, yaml.safe_dump(self._status, sort_keys=False).encode())

    async def record(self, action: Action, outcome: str, message: str) -> None:
        """Kubernetes records an Event here; locally the reconciler's log line is the record."""


def _backoff(restarts: int) -> float:
    return min(BACKOFF_BASE_S * (2 ** max(restarts - 1, 0)), BACKOFF_MAX_S) if restarts else 0.0


def _with_generation(s: ClusterSpec, g: int) -> ClusterSpec:
    from dataclasses import replace
    return replace(s, generation=g)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
