"""One pod on an agent node: its sandbox (address, volumes), init containers, containers
with probes and restarts, its status in the API, and its end.

As the kubelet: init containers run in order to success first; a container that exits is
started again as ``restartPolicy`` says, after 0 s, then ``backoff`` s, doubling up to
300 s (reset after 10 minutes of running), ``CrashLoopBackOff`` meanwhile; a failed
startup or liveness probe kills it (then the same); a deleted pod's containers get
SIGTERM, SIGKILL after its grace period, and then the pod object is deleted for good.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from datastore.kube.agent import runtime
from datastore.kube.agent.client import ApiError, path_of
from datastore.kube.agent.probes import Prober
from datastore.kube.agent.volumes import NotReady, Volumes, remove_pod_dir

if TYPE_CHECKING:
    from datastore.kube.agent.agent import Agent

log = logging.getLogger("datastore.kube.agent")

MAX_BACKOFF_S = 300.0
RESET_AFTER_S = 600.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Run:
    """One container of the pod: its current process and its history."""

    spec: dict[str, Any]
    init: bool = False
    proc: subprocess.Popen | None = None
    started_at: str = ""
    started_mono: float = 0.0
    restarts: int = -1  # incremented on every start: 0 after the first
    waiting: tuple[str, str] = ("ContainerCreating", "")
    terminated: dict[str, Any] | None = None
    last_state: dict[str, Any] | None = None
    next_start: float = 0.0
    delay: float = 0.0  # the wait before the next start
    backoff: float = 0.0  # the wait after the next exit
    probers: dict[str, Prober] = field(default_factory=dict)
    started: bool = False  # the startup probe passed (or there is none)
    kill_reason: str = ""
    mounts: list[list[Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ready(self) -> bool:
        r = self.probers.get("readiness")
        return self.running and self.started and (r is None or r.ok is True)

    def stop_probers(self) -> None:
        for p in self.probers.values():
            p.stop()
        self.probers = {}


class PodWorker(threading.Thread):
    def __init__(self, agent: Agent, pod: dict[str, Any]) -> None:
        md = pod["metadata"]
        super().__init__(name=f"pod {md['namespace']}/{md['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid = md["uid"]
        self.dir = agent.pods_dir / f"{md['namespace']}_{md['name']}_{self.uid}"
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stop_grace: float | None = None
        self.pod_gone = False
        self.ip = ""
        self.sandbox_ready = False
        self.volumes: Volumes | None = None
        # A pod this agent finds already started (it was restarted): counts go on from there.
        before = {c["name"]: c for key in ("initContainerStatuses", "containerStatuses")
                  for c in (pod.get("status") or {}).get(key) or [] if c.get("containerID")}
        counts = {name: int(c.get("restartCount") or 0) for name, c in before.items()}
        self.inits = [Run(c, init=True, restarts=counts.get(c["name"], -1))
                      for c in pod["spec"].get("initContainers") or []]
        self.runs = [Run(c, restarts=counts.get(c["name"], -1)) for c in pod["spec"]["containers"]]
        self.initialized = not self.inits
        self.start_time = ""
        self.sent: dict[str, Any] | None = None
        self.conditions: dict[str, dict[str, Any]] = {}
        self.events_sent: set[tuple[str, str]] = set()
        self.done = False

    # ---- called by the agent's loop -----------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        with self.lock:
            status = self.pod.get("status") or {}
            self.pod = {**pod, "status": {**(pod.get("status") or {}),
                                          **{k: status[k] for k in ("podIP", "podIPs") if k in status}}}
        self.wake.set()

    def request_stop(self, grace: float, gone: bool = False) -> None:
        with self.lock:
            self.stop_grace = grace if self.stop_grace is None else min(self.stop_grace, grace)
            self.pod_gone = self.pod_gone or gone
        self.wake.set()

    # ---- the worker -----------------------------------------------------------------------

    @property
    def md(self) -> dict[str, Any]:
        return self.pod["metadata"]

    def _path(self, sub: str | None = None) -> str:
        return path_of("pods", self.md["namespace"], self.md["name"], sub)

    def run(self) -> None:
        try:
            while self.stop_grace is None:
                self.wake.wait(0.5)  # also the poll interval of exits and back-offs
                self.wake.clear()
                if self.stop_grace is not None:
                    break
                try:
                    self._step()
                except (ApiError, OSError) as e:
                    log.warning("pod step failed", extra={"pod": self.name, "error": str(e)})
            self._terminate()
        except Exception:
            log.exception("pod worker failed", extra={"pod": self.name})
            self._kill_all(0)
        finally:
            if self.ip:
                self.agent.addresses.release(self.ip)
            self.done = True
            self.agent.wake.set()

    def _step(self) -> None:
        if not self.sandbox_ready and not self._sandbox():
            self._publish()
            return
        assert self.volumes is not None
        try:
            self.volumes.refresh_if_due()
        except NotReady as e:
            log.warning("volume refresh failed", extra={"pod": self.name, "error": str(e)})
        if not self.initialized:
            self._init_step()
        else:
            for r in self.runs:
                self._container_step(r)
        self._publish()

    def _sandbox(self) -> bool:
        """Address and volumes; False (with the reason as the containers' message) if not yet."""
        if not self.ip:
            ports = [int(p["containerPort"]) for c in self.pod["spec"]["containers"]
                     for p in c.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
            self.ip = self.agent.addresses.allocate(ports, (self.pod.get("status") or {}).get("podIP", ""))
            self.start_time = now()
            with self.lock:
                self.pod.setdefault("status", {}).update(
                    {"podIP": self.ip, "podIPs": [{"ip": self.ip}]})
        self.volumes = Volumes(self.agent.client, self.pod, self.dir, self.agent.allocatable)
        try:
            self.volumes.prepare()
        except NotReady as e:
            for r in self.inits + self.runs:
                r.waiting = ("ContainerCreating", str(e))
            self._event("Warning", "FailedMount", str(e), once=True)
            return False
        self.sandbox_ready = True
        return True

    def _init_step(self) -> None:
        for r in self.inits:
            if r.terminated is not None and r.terminated["exitCode"] == 0:
                continue
            self._container_step(r)
            return
        self.initialized = True
        self.wake.set()

    def _restart_policy(self, r: Run) -> str:
        policy = self.pod["spec"].get("restartPolicy") or "Always"
        if r.init:
            return "Never" if policy == "Never" else "OnFailure"
        return policy

    def _container_step(self, r: Run) -> None:
        if r.proc is not None and r.proc.poll() is not None:
            self._exited(r)
        if r.running:
            self._watch_probes(r)
            return
        if r.terminated is not None:
            policy = self._restart_policy(r)
            if policy == "Never" or (policy == "OnFailure" and r.terminated["exitCode"] == 0):
                return
        if time.monotonic() < r.next_start:
            r.waiting = ("CrashLoopBackOff", f"back-off {r.delay:.0f}s restarting failed container="
                         f"{r.name} pod={self.md['name']}_{self.md['namespace']}({self.uid})")
            return
        self._start(r)

    def _start(self, r: Run) -> None:
        try:
            img = runtime.image(r.spec["image"])
        except runtime.ImageError as e:
            r.waiting = ("ErrImagePull", str(e))
            r.next_start = time.monotonic() + 10  # ImagePullBackOff is retried
            self._event("Warning", "Failed", str(e), once=True)
            return
        assert self.volumes is not None
        home = self.dir / "home" / r.name
        home.mkdir(parents=True, exist_ok=True)
        try:
            r.mounts = self.volumes.mounts(r.spec)
            r.env = runtime.environment(self.pod, r.spec, img, self.agent.apiserver_port,
                                        self._lookup, self.agent.allocatable, home)
        except (NotReady, ValueError) as e:
            r.waiting = ("CreateContainerConfigError", str(e))
            r.next_start = time.monotonic() + 2
            return
        argv = runtime.argv(r.spec, img, r.env, self.ip)
        r.restarts += 1
        spec = {"argv": argv, "cwd": r.spec.get("workingDir") or img.workdir,
                "hostname": self.pod["spec"].get("hostname") or self.md["name"],
                "hosts": str(self.agent.hosts_path), "mounts": r.mounts}
        # the image's working directory may exist only as a mount of the pod's
        if not r.spec.get("workingDir") and not any(m[1] == img.workdir for m in r.mounts):
            spec["cwd"] = "/"
        # the container's output only (what kubectl logs shows); the agent logs the start
        logf = self.dir / "logs" / f"{r.name}.log"
        log.info("starting container", extra={"pod": self.name, "container": r.name,
                                              "restart": r.restarts, "argv": argv})
        r.proc = runtime.launch(self.dir / "run" / f"{r.name}.json", logf, r.env, spec)
        r.started_at, r.started_mono = now(), time.monotonic()
        if r.terminated is not None:
            r.last_state = {"terminated": r.terminated}
        r.terminated, r.kill_reason = None, ""
        r.started = "startupProbe" not in r.spec
        self._probe(r, "startupProbe" if not r.started else None)
        self._event("Normal", "Started", f"Started container {r.name}")

    def _probe(self, r: Run, only: str | None) -> None:
        kinds = [only] if only else [k for k in ("livenessProbe", "readinessProbe") if k in r.spec]
        for k in kinds:
            if k is None:
                continue
            p = Prober(k.removesuffix("Probe"), r.spec[k], r.spec, self.ip,
                       lambda cmd, t, r=r: self._exec(r, cmd, t), self.wake.set)
            r.probers[p.kind] = p
            p.start()

    def _watch_probes(self, r: Run) -> None:
        startup = r.probers.get("startup")
        if startup is not None and startup.ok is True:
            startup.stop()
            del r.probers["startup"]
            r.started = True
            self._probe(r, None)
        for kind in ("startup", "liveness"):
            p = r.probers.get(kind)
            if p is not None and p.ok is False:
                msg = f"{kind.capitalize()} probe failed: {p.message}"
                self._event("Warning", "Unhealthy", msg)
                self._event("Normal", "Killing",
                            f"Container {r.name} failed {kind} probe, will be restarted")
                r.kill_reason = "Error"
                self._stop_run(r, self._grace())

    def _exited(self, r: Run) -> None:
        assert r.proc is not None
        code = r.proc.returncode
        r.stop_probers()
        ran = time.monotonic() - r.started_mono
        r.terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                        "startedAt": r.started_at, "finishedAt": now(),
                        "containerID": self._cid(r)}
        r.proc = None
        if ran >= RESET_AFTER_S:
            r.backoff = 0.0
        r.delay = r.backoff
        r.next_start = time.monotonic() + r.delay
        base = self.agent.backoff_base
        r.backoff = min(MAX_BACKOFF_S, r.backoff * 2 if r.backoff else base)
        if code != 0 and not r.init:
            log.info("container exited", extra={"pod": self.name, "container": r.name, "code": code})

    def _cid(self, r: Run) -> str:
        return f"agent://{self.uid}-{r.name}-{r.restarts}"

    def _grace(self) -> float:
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    def _stop_run(self, r: Run, grace: float) -> None:
        proc = r.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._exited(r)

    def _kill_all(self, grace: float) -> None:
        runs = [r for r in self.inits + self.runs if r.proc is not None]
        threads = [threading.Thread(target=self._stop_run, args=(r, grace)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _terminate(self) -> None:
        grace = self.stop_grace or 0.0
        if any(r.proc is not None for r in self.inits + self.runs):
            self._event("Normal", "Killing", "Stopping container(s)")
        self._kill_all(grace)
        remove_pod_dir(self.dir)
        if self.pod_gone or self.agent.stopping.is_set():
            return
        try:
            self._publish(final=True)
            self.agent.client.delete(self._path(), {
                "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}})
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("final delete failed", extra={"pod": self.name, "error": str(e)})

    def _exec(self, r: Run, cmd: list[str], timeout: float) -> int:
        """An exec probe: ``cmd`` with the container's mounts, host name and variables."""
        spec = {"argv": cmd, "cwd": "/", "hostname": self.pod["spec"].get("hostname") or self.md["name"],
                "hosts": str(self.agent.hosts_path), "mounts": r.mounts}
        n = time.monotonic_ns()
        proc = runtime.launch(self.dir / "run" / f"exec-{n}.json", self.dir / "logs" / f"{r.name}.exec.log",
                              r.env, spec)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -1
        finally:
            (self.dir / "run" / f"exec-{n}.json").unlink(missing_ok=True)

    def _lookup(self, kind: str, name: str, key: str | None, optional: bool) -> Any:
        res = "secrets" if kind.startswith("secret") else "configmaps"
        try:
            obj = self.agent.client.get(path_of(res, self.md["namespace"], name))
        except ApiError as e:
            if e.status == 404 and optional:
                return None
            raise ValueError(f'{res[:-1]} "{name}" not found' if e.status == 404 else str(e)) from e
        if res == "secrets":
            data = {k: base64.b64decode(v).decode(errors="replace")
                    for k, v in (obj.get("data") or {}).items()}
        else:
            data = dict(obj.get("data") or {})
        if key is None:
            return data
        if key not in data:
            if optional:
                return None
            raise ValueError(f"couldn't find key {key} in {res[:-1]} {self.md['namespace']}/{name}")
        return data[key]

    # ---- status -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{self.md['namespace']}/{self.md['name']}"

    def _restarts(self, r: Run) -> bool:
        """Whether a terminated ``r`` will be started again."""
        policy = self._restart_policy(r)
        t = r.terminated
        return policy == "Always" or (policy == "OnFailure" and t is not None and t["exitCode"] != 0)

    def _container_status(self, r: Run, final: bool = False) -> dict[str, Any]:
        last = r.last_state or {}
        if r.running:
            state: dict[str, Any] = {"running": {"startedAt": r.started_at}}
        elif r.terminated is not None and (final or not self._restarts(r)):
            state = {"terminated": r.terminated}
        else:
            reason, message = r.waiting
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
            if r.terminated is not None:
                last = {"terminated": r.terminated}
        out: dict[str, Any] = {
            "name": r.name, "image": r.spec["image"], "imageID": "", "state": state,
            "lastState": last, "ready": r.ready, "restartCount": max(r.restarts, 0),
            "started": r.running and r.started,
        }
        if r.running or r.terminated is not None:
            out["containerID"] = self._cid(r)
        return out

    def _phase(self, final: bool = False) -> str:
        policy = self.pod["spec"].get("restartPolicy") or "Always"
        if final:  # a deleted pod ends in a terminal phase, as the kubelet reports it
            ok = all(r.terminated is None or r.terminated["exitCode"] == 0 for r in self.runs)
            return "Succeeded" if ok else "Failed"
        if not self.initialized:
            failed_init = any(r.terminated is not None and r.terminated["exitCode"] != 0 for r in self.inits)
            return "Failed" if failed_init and policy == "Never" else "Pending"
        if any(r.running for r in self.runs):
            return "Running"
        if any(r.restarts < 0 for r in self.runs):
            return "Pending"
        done = [r.terminated for r in self.runs]
        if policy == "Always" or any(t is None for t in done):
            return "Running"
        if all(t and t["exitCode"] == 0 for t in done):
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"  # OnFailure: failed ones are restarted

    def _condition(self, kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        old = self.conditions.get(kind)
        if old is None or old["status"] != status:
            old = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": now()}
            if reason and not ok:
                old["reason"] = reason
            self.conditions[kind] = old
        return old

    def status(self, final: bool = False) -> dict[str, Any]:
        ready = self.initialized and all(r.ready for r in self.runs) and not final
        conds = [
            self._condition("PodReadyToStartContainers", self.sandbox_ready and not final),
            self._condition("Initialized", self.initialized, "ContainersNotInitialized"),
            self._condition("ContainersReady", ready, "ContainersNotReady"),
            self._condition("Ready", ready, "ContainersNotReady"),
        ]
        st: dict[str, Any] = {
            "phase": self._phase(final), "conditions": conds,
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "containerStatuses": [self._container_status(r, final) for r in self.runs],
        }
        if self.inits:
            st["initContainerStatuses"] = [self._container_status(r, final) for r in self.inits]
        if self.ip:  # replaced, not merged: an address given before a restart of the agent goes
            st["podIP"], st["podIPs"] = self.ip, [{"ip": self.ip}, {"$patch": "replace"}]
        if self.start_time:
            st["startTime"] = self.start_time
        return st

    def _publish(self, final: bool = False) -> None:
        st = self.status(final)
        if st == self.sent:
            return
        self.agent.client.patch(self._path("status"), {"status": st}, kind="strategic-merge")
        self.sent = st
        self.agent.wake.set()  # the hosts file may name this pod now

    def _event(self, kind: str, reason: str, message: str, once: bool = False) -> None:
        if once:
            if (reason, message) in self.events_sent:
                return
            self.events_sent.add((reason, message))
        self.agent.event(self.pod, kind, reason, message)


def is_terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
