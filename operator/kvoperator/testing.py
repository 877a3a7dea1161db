"""Test doubles for the Kubernetes side (there is no API server on a test machine).

- :class:`FakeKube`: a recording stand-in of the ``kubernetes`` client surface the
  operator uses (CoreV1Api, PolicyV1Api, CustomObjectsApi, Watch.stream). It keeps
  objects by kind, answers list/create/patch/delete as the API server would (409, 404,
  resourceVersion), records every call, and replays scripted watch events, including
  ``410 Gone``.
- :class:`ProcessKubelet`: runs the pods created through a FakeKube as real local
  ``datastore serve`` processes (the pod's own command and args, listen addresses mapped
  to 127.0.0.1 ports, each PVC a directory), and reports pod phases back, so the
  Kubernetes platform can be driven end to end on one machine.
- :class:`PortURLs`: member URLs on 127.0.0.1 ports instead of pod DNS names.
"""

from __future__ import annotations

import copy
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kvoperator.kube import CLIENT_PORT, DATA_MOUNT, METRICS_PORT, PEER_PORT, KubeClients, member_name
from kvoperator.spec import ClusterSpec


class ApiError(Exception):
    """Shaped like kubernetes.client.exceptions.ApiException (the operator reads .status)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"({status}) {reason}")
        self.status = status
        self.reason = reason


class _Recorder:
    """One API group: every method call is recorded and served from the store."""

    def __init__(self, kube: FakeKube) -> None:
        self._kube = kube

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            # Copies, as the wire would make: later changes to the objects do not rewrite history.
            args, kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)
            self._kube.calls.append((method, args, kwargs))
            return copy.deepcopy(self._kube.serve(method, copy.deepcopy(args), kwargs))
        call.__name__ = method
        return call


_KINDS = {"pod": "pod", "persistent_volume_claim": "pvc", "service": "service",
          "pod_disruption_budget": "pdb", "event": "event"}


class FakeKube:
    def __init__(self, kubelet: ProcessKubelet | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.store: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in
                                                                         (*_KINDS.values(), "cr")}
        self.rv = 100
        self.watch_script: dict[str, list[Any]] = {}  # plural (or "pods") -> events/exceptions
        self.kubelet = kubelet
        self.core, self.policy, self.custom = _Recorder(self), _Recorder(self), _Recorder(self)

    def clients(self) -> KubeClients:
        from kubernetes.client import ApiClient
        return KubeClients(self.core, self.policy, self.custom, self.watch,
                           ApiClient().sanitize_for_serialization)

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def made(self, method: str) -> list[Any]:
        """The positional arguments of every recorded call of ``method``."""
        return [args for m, args, _ in self.calls if m == method]

    def serve(self, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        verb = method.split("_", 1)[0]
        kind = next((v for k, v in _KINDS.items()
                     if method.endswith((k, k + "s")) or f"_{k}_for" in method), "cr")
        store = self.store[kind]
        if verb == "list":
            items = list(store.values())
            if kw.get("label_selector"):
                want = dict(x.split("=", 1) for x in kw["label_selector"].split(","))
                items = [o for o in items if all((o["metadata"].get("labels") or {}).get(k) == v
                                                 for k, v in want.items())]
            return {"metadata": {"resourceVersion": str(self.rv)}, "items": items}
        if verb == "create":
            ns, body = args
            md = body["metadata"]
            key = (ns, md.get("name") or f"{md['generateName']}{self.rv}")
            if key in store:
                raise ApiError(409, "AlreadyExists")
            obj = {**body, "metadata": {**md, "namespace": ns, "name": key[1],
                                        "resourceVersion": self.next_rv()}}
            store[key] = obj
            if kind == "pod" and self.kubelet is not None:
                self.kubelet.run_pod(obj)
            return obj
        if verb == "delete":
            key = (args[1], args[0])
            if key not in store:
                raise ApiError(404, "NotFound")
            obj = store.pop(key)
            self.next_rv()
            if self.kubelet is not None:
                if kind == "pod":
                    self.kubelet.stop_pod(obj)
                elif kind == "pvc":
                    self.kubelet.delete_volume(obj)
            return obj
        if method == "patch_namespaced_custom_object_status":
            _g, _v, ns, _p, name, body = args
            obj = store[(ns, name)]
            obj["status"] = body["status"]
            obj["metadata"]["resourceVersion"] = self.next_rv()
            return obj
        if verb == "patch":
            name, ns, body = args
            obj = store[(ns, name)]
            _merge(obj, body)
            obj["metadata"]["resourceVersion"] = self.next_rv()
            return obj
        raise AssertionError(f"the stand-in does not serve {method}")

    def watch(self, fn: Any, **kw: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(("watch", (getattr(fn, "__name__", str(fn)),), kw))
        for ev in self.watch_script.pop(kw.get("plural") or "pods", []):
            if isinstance(ev, BaseException):
                raise ev
            yield ev


def _merge(obj: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386), as the client sends dict bodies."""
    for k, v in patch.items():
        if v is None:
            obj.pop(k, None)
        elif isinstance(v, dict) and isinstance(obj.get(k), dict):
            _merge(obj[k], v)
        else:
            obj[k] = v


class PortURLs:
    """Member i: client ``127.0.0.1:P+10i``, peer ``P+10i+1`` (metrics ``P+10i+2``)."""

    def __init__(self, base_port: int) -> None:
        self.base = base_port

    def client_url(self, s: ClusterSpec, i: int) -> str:
        return f"http://127.0.0.1:{self.base + 10 * i}"

    def peer_url(self, s: ClusterSpec, i: int) -> str:
        return f"http://127.0.0.1:{self.base + 10 * i + 1}"

    def ordinal_of(self, s: ClusterSpec, url: str) -> int | None:
        port = urlparse(url).port
        off = (port or 0) - self.base - 1
        return off // 10 if off >= 0 and off % 10 == 0 else None


class ProcessKubelet:
    """Runs FakeKube pods as local processes; one directory per PVC under ``root``."""

    def __init__(self, root: Path, base_port: int) -> None:
        self.root = root
        self.base = base_port
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.restarts: dict[tuple[str, str], int] = {}

    def _argv(self, pod: dict[str, Any]) -> list[str]:
        md, c = pod["metadata"], pod["spec"]["containers"][0]
        i = int(md["labels"]["datastore.dev/ordinal"])
        ports = {CLIENT_PORT: self.base + 10 * i, PEER_PORT: self.base + 10 * i + 1,
                 METRICS_PORT: self.base + 10 * i + 2}
        claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                     if v["name"] == "data")
        args = []
        for a in c["args"]:
            for port, local in ports.items():
                a = a.replace(f"0.0.0.0:{port}", f"127.0.0.1:{local}")
            a = a.replace(f"={DATA_MOUNT}/", f"={self.root / claim}/")
            args.append(a)
        assert c["command"][0] == "datastore"
        return [sys.executable, "-m", "datastore", *c["command"][1:], *args]

    def run_pod(self, pod: dict[str, Any]) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.root / "logs" / f"{key[1]}.log", "ab") as log:
            self.procs[key] = subprocess.Popen(self._argv(pod), stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL)
        pod["status"] = {"phase": "Pending"}

    def stop_pod(self, pod: dict[str, Any]) -> None:
        p = self.procs.pop((pod["metadata"]["namespace"], pod["metadata"]["name"]), None)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def delete_volume(self, pvc: dict[str, Any]) -> None:
        shutil.rmtree(self.root / pvc["metadata"]["name"], ignore_errors=True)

    def kill9(self, namespace: str, name: str) -> None:
        p = self.procs[(namespace, name)]
        p.kill()
        p.wait()

    def sync(self, kube: FakeKube) -> None:
        """Pod status from the processes: Running while alive; restart an exited container
        as the kubelet does (restartPolicy Always), counting restarts."""
        for key, pod in kube.store["pod"].items():
            p = self.procs.get(key)
            if p is None:
                continue
            n = self.restarts.get(key, 0)
            if p.poll() is not None:
                self.restarts[key] = n = n + 1
                with open(self.root / "logs" / f"{key[1]}.log", "ab") as log:
                    self.procs[key] = subprocess.Popen(self._argv(pod), stdout=log,
                                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            running = self.procs[key].poll() is None
            new = {"phase": "Running", "containerStatuses": [
                {"name": "datastore", "ready": running, "restartCount": n,
                 "state": {"running": {}} if running else {"waiting": {"reason": "CrashLoopBackOff"}}}]}
            if pod.get("status") != new:
                pod["status"] = new
                pod["metadata"]["resourceVersion"] = kube.next_rv()

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs.clear()


def member_key(s: ClusterSpec, i: int) -> tuple[str, str]:
    return (s.namespace, member_name(s, i))


__all__ = ["ApiError", "FakeKube", "PortURLs", "ProcessKubelet", "member_key"]
