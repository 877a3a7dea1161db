"""Test doubles for the Kubernetes side (there is no API server on a test machine).

- :class:`FakeKube`: a recording stand-in of the ``kubernetes`` client surface the
  operator uses (CoreV1Api, PolicyV1Api, CustomObjectsApi, Watch.stream). It keeps
  objects by kind and answers as the API server would: resourceVersions, list by
  namespace and labels, watches that stream changes (``410 Gone`` once compacted),
  404/409/422 with the API server's Status, deletion timestamps and finalizers
  (``kubernetes.io/pvc-protection``), graceful pod deletion, owner-reference garbage
  collection. It records every call the operator makes (``permissions_used`` turns them
  into RBAC attributes) and can raise queued faults.
- :class:`ProcessKubelet`: runs the pods created through a FakeKube as real local
  ``datastore serve`` processes (the pod's own command and args, listen addresses mapped
  to 127.0.0.1 ports, each PVC a directory), and reports pod phases back, so the
  Kubernetes platform can be driven end to end on one machine.
- :class:`PortURLs`: member URLs on 127.0.0.1 ports instead of pod DNS names.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kvoperator import spec as specmod
from kvoperator.kube import CLIENT_PORT, DATA_MOUNT, METRICS_PORT, PEER_PORT, KubeClients, member_name
from kvoperator.spec import ClusterSpec

HTTP_REASONS = {400: "Bad Request", 404: "Not Found", 409: "Conflict", 410: "Gone",
                422: "Unprocessable Entity", 500: "Internal Server Error"}


class ApiError(Exception):
    """Shaped like kubernetes.client.exceptions.ApiException: ``.status`` (the HTTP code),
    ``.reason`` (its phrase) and ``.body``, the API server's ``Status`` object as JSON."""

    def __init__(self, status: int, reason: str | None = None, message: str = "",
                 status_reason: str = "", details: dict[str, Any] | None = None) -> None:
        self.status = status
        self.reason = reason or HTTP_REASONS.get(status, "Error")
        self.message = message or self.reason
        self.status_obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": self.message, "reason": status_reason or self.reason.replace(" ", ""),
                           "details": details or {}, "code": status}
        self.body = json.dumps(self.status_obj)
        self.headers: dict[str, str] | None = None
        super().__init__(f"({status})\nReason: {self.reason}\nHTTP response body: {self.body}\n")


# kind -> (plural, API group, Kind)
KINDS = {"pod": ("pods", "", "Pod"), "pvc": ("persistentvolumeclaims", "", "PersistentVolumeClaim"),
         "service": ("services", "", "Service"),
         "pdb": ("poddisruptionbudgets", "policy", "PodDisruptionBudget"),
         "event": ("events", "", "Event"), "cr": (specmod.PLURAL, specmod.GROUP, specmod.KIND)}
# the client's method-name spelling of each kind (custom objects are "cr")
_CLIENT_NAMES = {"pod": "pod", "persistent_volume_claim": "pvc", "service": "service",
                 "pod_disruption_budget": "pdb", "event": "event"}
PVC_PROTECTION = "kubernetes.io/pvc-protection"
_VERBS = {"read": "get", "replace": "update"}


def kind_of(method: str) -> str:
    if "custom_object" in method:
        return "cr"
    return next((v for k, v in _CLIENT_NAMES.items()
                 if method.endswith((k, k + "s")) or f"_{k}_for" in method), "")


def _custom_args(method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a CustomObjectsApi call by name (the client takes them either way)."""
    names = ["group", "version"] + ([] if "_cluster_" in method else ["namespace"]) + ["plural"]
    if method.startswith(("patch", "delete", "read", "replace")):
        names.append("name")
    if method.startswith(("patch", "create", "replace")):
        names.append("body")
    return {**dict(zip(names, args, strict=False)), **kw}


def rbac_attributes(method: str, args: tuple[Any, ...] = (), kw: dict[str, Any] | None = None,
                    ) -> set[tuple[str, str, str]]:
    """What the API server's authorizer checks for one client call: (API group, resource,
    verb), ``resource/subresource`` for subresources, ``watch`` for a watch on a list call.
    A body with an owner reference that blocks owner deletion also needs ``update`` on the
    owner's ``finalizers`` (the OwnerReferencesPermissionEnforcement admission plugin)."""
    kw = kw or {}
    if method == "watch":
        (fn,) = args
        return {(g, r, "watch") for g, r, _ in rbac_attributes(fn, (), kw)}
    verb = _VERBS.get(method.split("_", 1)[0], method.split("_", 1)[0])
    kind = kind_of(method)
    plural, group, _ = KINDS[kind]
    body: Any = None
    if kind == "cr":
        a = _custom_args(method, args, kw)
        group, plural, body = a["group"], a["plural"], a.get("body")
    elif verb in ("create", "patch", "update"):
        body = args[-1] if args else kw.get("body")
    if method.endswith("_status"):
        plural += "/status"
    out = {(group, plural, verb)}
    for ref in ((body or {}).get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("blockOwnerDeletion"):
            owner_group = ref["apiVersion"].rsplit("/", 1)[0] if "/" in ref["apiVersion"] else ""
            owner_plural = next(pl for pl, _g, k in KINDS.values() if k == ref["kind"])
            out.add((owner_group, f"{owner_plural}/finalizers", "update"))
    return out


class _Recorder:
    """One API group: every method call is recorded (unless this is the admin's surface)
    and served from the store."""

    def __init__(self, kube: FakeKube, record: bool = True) -> None:
        self._kube = kube
        self._record = record

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            # Copies, as the wire would make: later changes to the objects do not rewrite history.
            args, kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)
            if self._record:
                self._kube.calls.append((method, args, kwargs))
            try:
                return copy.deepcopy(self._kube.serve(method, copy.deepcopy(args), kwargs))
            except ApiError as e:
                if self._record:
                    self._kube.refused.append((method, e.status, e.message))
                raise
        call.__name__ = method
        return call


class _Admin:
    """The test's own hands on the API (kubectl, a node drain): served like any client,
    not recorded among the operator's calls."""

    def __init__(self, kube: FakeKube) -> None:
        self.core, self.policy, self.custom = (_Recorder(kube, record=False) for _ in range(3))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _selector(kw: dict[str, Any]) -> dict[str, str]:
    """An equality-based label selector ``a=b,c=d`` as a dict."""
    sel = kw.get("label_selector") or ""
    return dict(x.split("=", 1) for x in sel.split(",")) if sel else {}


class FakeKube:
    """The API server's behaviour that the operator meets, over a dict per kind.

    Modelled: resourceVersions; list by namespace and label selector; watch from a
    resourceVersion (events replayed from a log, then streamed as they happen; 410 Gone
    once the log is compacted past it); 404/409 with the API server's Status; PDB
    validation (422 when minAvailable and maxUnavailable are both set); deletion
    timestamps and finalizers: a PVC carries ``kubernetes.io/pvc-protection`` and stays
    Terminating while a scheduled pod uses it; a pod on a node (with a kubelet attached)
    stays Terminating until the kubelet has stopped it; deleting a DatastoreCluster
    deletes what it owns (the garbage collector). Faults can be queued per method.
    """

    def __init__(self, kubelet: ProcessKubelet | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.refused: list[tuple[str, int, str]] = []  # the operator's calls answered with an error
        self.store: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in KINDS}
        self.rv = 100
        self.watch_script: dict[str, list[Any]] = {}  # plural (or "pods") -> events/exceptions
        self.faults: dict[str, list[BaseException]] = {}  # method (or "watch") -> raised in turn
        self.log: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, kind, type, object)
        self.log_from = self.rv  # watches from before this are 410 Gone
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.closed = False
        self.watch_epoch = 0  # end_watches() bumps it: open watch streams end, as on a timeout
        self.controllers_paused = False  # kube-controller-manager lagging: finalizers stay
        self.kubelet = kubelet
        self.core, self.policy, self.custom = _Recorder(self), _Recorder(self), _Recorder(self)
        self.admin = _Admin(self)

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

    def permissions_used(self) -> set[tuple[str, str, str]]:
        """(API group, resource, verb) of every call the operator made, as RBAC sees them."""
        out: set[tuple[str, str, str]] = set()
        for method, args, kw in list(self.calls):
            out |= rbac_attributes(method, args, kw)
        return out

    def fail(self, method: str, *errors: BaseException) -> None:
        """The next calls of ``method`` (or of ``watch``) raise these, one each."""
        with self.lock:
            self.faults.setdefault(method, []).extend(errors)

    def _fault(self, method: str) -> None:
        with self.lock:
            queued = self.faults.get(method)
            if queued:
                raise queued.pop(0)

    # ---- changes, and what every watcher sees of them ----

    def _emit(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        self.log.append((int(obj["metadata"]["resourceVersion"]), kind, type_, copy.deepcopy(obj)))
        self.changed.notify_all()

    def _put(self, kind: str, obj: dict[str, Any], type_: str = "MODIFIED") -> dict[str, Any]:
        md = obj["metadata"]
        md["resourceVersion"] = self.next_rv()
        self.store[kind][(md["namespace"], md["name"])] = obj
        self._emit(kind, type_, obj)
        return obj

    def _remove(self, kind: str, key: tuple[str, str]) -> dict[str, Any]:
        obj = self.store[kind].pop(key)
        obj["metadata"]["resourceVersion"] = self.next_rv()
        self._emit(kind, "DELETED", obj)
        if self.kubelet is not None and kind == "pvc":
            self.kubelet.delete_volume(obj)
        elif self.kubelet is not None and kind == "pod":
            self.kubelet.stop_pod(obj)  # a no-op once the kubelet has stopped it
        if kind == "cr":  # the garbage collector: background deletion of what it owned
            uid = obj["metadata"].get("uid")
            for k in ("pod", "pvc", "service", "pdb"):
                for okey, o in list(self.store[k].items()):
                    if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or []):
                        self._delete(k, okey)
        return obj

    def _delete(self, kind: str, key: tuple[str, str]) -> dict[str, Any]:
        obj = self.store[kind][key]
        md = obj["metadata"]
        graceful = bool(kind == "pod" and self.kubelet is not None and (obj.get("spec") or {}).get("nodeName")
                        and (obj.get("status") or {}).get("phase") not in ("Failed", "Succeeded"))
        if not (md.get("finalizers") or graceful):
            self._remove(kind, key)
            self._controllers()
            return obj
        if not md.get("deletionTimestamp"):
            md["deletionTimestamp"] = _now()
            md["deletionGracePeriodSeconds"] = 30 if graceful else 0
            self._put(kind, obj)
        self._controllers()
        return obj

    def _controllers(self) -> None:
        """What kube-controller-manager would do next: the PVC protection controller lets a
        deleted claim go once no scheduled pod refers to it."""
        if self.controllers_paused:
            return
        for key, pvc in list(self.store["pvc"].items()):
            md = pvc["metadata"]
            if not md.get("deletionTimestamp") or PVC_PROTECTION not in (md.get("finalizers") or []):
                continue
            if any(p["metadata"]["namespace"] == key[0] and (p.get("spec") or {}).get("nodeName")
                   and any((v.get("persistentVolumeClaim") or {}).get("claimName") == key[1]
                           for v in (p.get("spec") or {}).get("volumes") or [])
                   for p in self.store["pod"].values()):
                continue
            md["finalizers"] = [f for f in md["finalizers"] if f != PVC_PROTECTION]
            if md["finalizers"]:
                self._put("pvc", pvc)
            else:
                self._remove("pvc", key)

    def finish_pod_deletion(self, key: tuple[str, str]) -> None:
        """The kubelet has stopped a terminating pod's containers: the pod goes."""
        with self.lock:
            if key in self.store["pod"]:
                self._remove("pod", key)
                self._controllers()

    def set_pod_status(self, key: tuple[str, str], status: dict[str, Any]) -> None:
        """The kubelet's status update (a MODIFIED event, as on a real API server)."""
        with self.lock:
            pod = self.store["pod"].get(key)
            if pod is not None and pod.get("status") != status:
                pod["status"] = status
                self._put("pod", pod)

    def pause_controllers(self, paused: bool = True) -> None:
        """Hold (or let go) the PVC protection controller, as when kube-controller-manager
        lags or is down: a deleted PVC then stays Terminating after its pod is gone."""
        with self.lock:
            self.controllers_paused = paused
            self._controllers()

    def compact(self) -> None:
        """Forget the event log: a watch from an older resourceVersion gets 410 Gone."""
        with self.lock:
            self.log.clear()
            self.log_from = self.rv

    def end_watches(self) -> None:
        """End every open watch stream (as the API server does at its timeout)."""
        with self.lock:
            self.watch_epoch += 1
            self.changed.notify_all()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()

    # ---- the API ----

    def serve(self, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        with self.lock:
            self._fault(method)
            return self._serve(method, args, kw)

    def _serve(self, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        verb = method.split("_", 1)[0]
        kind = kind_of(method)
        if not kind:
            raise AssertionError(f"the stand-in does not serve {method}")
        plural, group, _ = KINDS[kind]
        store = self.store[kind]
        if kind == "cr":
            a = _custom_args(method, args, kw)
            ns, name, body = a.get("namespace"), a.get("name"), a.get("body")
        else:
            names = {"list": ["namespace"] if "_namespaced_" in method else [],
                     "create": ["namespace", "body"], "delete": ["name", "namespace"],
                     "patch": ["name", "namespace", "body"], "read": ["name", "namespace"]}[verb]
            a = {**dict(zip(names, args, strict=False)), **kw}
            ns, name, body = a.get("namespace"), a.get("name"), a.get("body")
        if verb == "list":
            want = _selector(kw)
            items = [o for (ons, _), o in store.items() if (ns is None or ons == ns) and all(
                (o["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())]
            return {"metadata": {"resourceVersion": str(self.rv)}, "items": items}
        if verb == "create":
            assert ns is not None and body is not None
            md = body["metadata"]
            key = (ns, md.get("name") or f"{md['generateName']}{self.rv}")
            if key in store:
                raise ApiError(409, message=f'{plural} "{key[1]}" already exists',
                               status_reason="AlreadyExists",
                               details={"name": key[1], "group": group, "kind": plural})
            obj = {**body, "metadata": {**md, "namespace": ns, "name": key[1], "creationTimestamp": _now(),
                                        "uid": md.get("uid") or f"uid-{kind}-{self.rv}"}}
            if kind == "pvc":  # the StorageObjectInUseProtection admission plugin
                obj["metadata"]["finalizers"] = [*(md.get("finalizers") or []), PVC_PROTECTION]
            if kind == "pdb":
                _validate_pdb(obj)
            if kind == "pod" and self.kubelet is not None:
                obj.setdefault("spec", {})["nodeName"] = self.kubelet.node_name  # scheduled
                self.kubelet.run_pod(obj)
            return self._put(kind, obj, "ADDED")
        key = (ns or "", name or "")
        if key not in store:
            raise ApiError(404, message=f'{plural} "{key[1]}" not found', status_reason="NotFound",
                           details={"name": key[1], "group": group, "kind": plural})
        if verb == "read":
            return store[key]
        if verb == "delete":
            return self._delete(kind, key)
        if verb == "patch":
            obj = copy.deepcopy(store[key])
            if method.endswith("_status"):
                obj["status"] = body["status"]
            else:
                _merge(obj, body)
            if kind == "pdb":
                _validate_pdb(obj)
            if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
                return self._remove(kind, key)
            return self._put(kind, obj)
        raise AssertionError(f"the stand-in does not serve {method}")

    def watch(self, fn: Any, **kw: Any) -> Iterator[dict[str, Any]]:
        """Watch.stream(list_fn, resource_version=..., timeout_seconds=...): the events after
        that resourceVersion, then each change as it happens, until the timeout, close() or
        end_watches()."""
        fn_name = getattr(fn, "__name__", str(fn))
        self.calls.append(("watch", (fn_name,), kw))
        plural = kw.get("plural") or "pods"
        if plural in self.watch_script:  # a scripted stream (events and exceptions)
            for ev in self.watch_script.pop(plural):
                if isinstance(ev, BaseException):
                    raise ev
                yield ev
            return
        self._fault("watch")
        kind, ns, want = kind_of(fn_name), kw.get("namespace"), _selector(kw)
        deadline = time.monotonic() + float(kw.get("timeout_seconds") or 300)
        with self.lock:
            since = int(kw.get("resource_version") or self.rv)
            if since < self.log_from:
                raise ApiError(410, message=f"too old resource version: {since} ({self.log_from})",
                               status_reason="Expired")
            epoch = self.watch_epoch
        pos = 0
        while True:
            with self.lock:
                while True:
                    pos = min(pos, len(self.log))  # compacted meanwhile
                    fresh = [e for e in self.log[pos:] if e[0] > since]
                    pos = len(self.log)
                    if fresh or self.closed or self.watch_epoch != epoch:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self.changed.wait(left)
            if not fresh:
                return  # closed, or ended by end_watches()
            for rv, k, type_, obj in fresh:
                since = rv
                md = obj["metadata"]
                if k != kind or (ns and md.get("namespace") != ns) or any(
                        (md.get("labels") or {}).get(lk) != lv for lk, lv in want.items()):
                    continue
                yield {"type": type_, "raw_object": copy.deepcopy(obj), "object": copy.deepcopy(obj)}


def _validate_pdb(obj: dict[str, Any]) -> None:
    """policy validation of a PodDisruptionBudget's spec (ValidatePodDisruptionBudgetSpec):
    the one rule the operator can break, with the API server's status and message."""
    spec = obj.get("spec") or {}
    if spec.get("minAvailable") is None or spec.get("maxUnavailable") is None:
        return
    name = obj["metadata"]["name"]
    # The invalid value is the internal spec type as Go marshals it: field names as declared.
    value = json.dumps({"MinAvailable": spec["minAvailable"], "Selector": spec.get("selector"),
                        "MaxUnavailable": spec["maxUnavailable"],
                        "UnhealthyPodEvictionPolicy": spec.get("unhealthyPodEvictionPolicy")},
                       separators=(",", ":"))
    body = f"Invalid value: {value}: minAvailable and maxUnavailable cannot be both set"
    raise ApiError(422, message=f'PodDisruptionBudget.policy "{name}" is invalid: spec: {body}',
                   status_reason="Invalid",
                   details={"name": name, "group": "policy", "kind": "PodDisruptionBudget",
                            "causes": [{"reason": "FieldValueInvalid", "message": body, "field": "spec"}]})


def _merge(obj: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386). For the maps the operator patches, strategic merge
    patch (the client's choice for dict bodies) does the same: null deletes a key."""
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
    """Runs FakeKube pods as local processes; one directory per PVC under ``root``.

    Pods it runs are on its node (``spec.nodeName``), so their deletion is graceful: the
    pod stays Terminating until :meth:`sync` has stopped its process. ``hold(name)`` keeps
    a pod Terminating (a slow shutdown) until ``release(name)``.
    """

    def __init__(self, root: Path, base_port: int, node_name: str = "node-0") -> None:
        self.root = root
        self.base = base_port
        self.node_name = node_name
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.restarts: dict[tuple[str, str], int] = {}
        self.held: set[str] = set()

    def hold(self, name: str) -> None:
        self.held.add(name)

    def release(self, name: str) -> None:
        self.held.discard(name)

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
        as the kubelet does (restartPolicy Always), counting restarts. A terminating pod's
        process is stopped and the pod deleted (unless held)."""
        with kube.lock:
            pods = {k: copy.deepcopy(p) for k, p in kube.store["pod"].items()}
        for key, pod in pods.items():
            if pod["metadata"].get("deletionTimestamp"):
                if key[1] not in self.held:
                    self.stop_pod(pod)
                    kube.finish_pod_deletion(key)
                continue
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
            kube.set_pod_status(key, {"phase": "Running", "containerStatuses": [
                {"name": "datastore", "ready": running, "restartCount": n,
                 "state": {"running": {}} if running else {"waiting": {"reason": "CrashLoopBackOff"}}}]})

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs.clear()


def member_key(s: ClusterSpec, i: int) -> tuple[str, str]:
    return (s.namespace, member_name(s, i))


__all__ = ["ApiError", "FakeKube", "PortURLs", "ProcessKubelet", "member_key", "rbac_attributes"]
