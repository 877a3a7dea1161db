"""KubernetesPlatform: one Pod + one PVC per member, driven by the shared planner.

Objects per ``DatastoreCluster`` ``<name>`` (all owned by it, so they go with it):
- Pod ``<name>-<i>`` with hostname ``<name>-<i>`` and subdomain ``<name>-headless``, so
  its stable DNS name is ``<name>-<i>.<name>-headless.<ns>.svc``; the container runs
  ``datastore serve`` with etcd's flag names, probes ``/livez`` and ``/readyz`` on the
  metrics port, non-root (the same shape as ``manifests/static``).
- PVC ``data-<name>-<i>`` (deleted only when its member is removed or replaced).
- Service ``<name>-headless`` (publishes not-ready pods, for the peers) and Service
  ``<name>`` for clients, selecting only pods labelled ``datastore.dev/role: voter``:
  learners serve almost no client RPCs, so they stay out of client endpoints.
- PodDisruptionBudget ``<name>`` over the voters: drains keep a quorum.
- Status through the status subresource; an Event for each action.

List-watch (kopf's ``continuous_watch`` pattern, by hand): list, then watch from the
list's resourceVersion, updating it from every event; on ``410 Gone`` relist. The watch
threads only fill caches and wake the loop; every decision is a reconcile pass over
what the caches and the members say (level-triggered).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlparse

from kvoperator import spec as specmod
from kvoperator.etcdapi import ClientClusterAPI, ClusterAPI
from kvoperator.metrics import OperatorMetrics
from kvoperator.planner import Action, ActionKind, Observed, Phase, Workload, quorum
from kvoperator.reconcile import NotYet, Reconciler, now_rfc3339
from kvoperator.spec import ClusterSpec
from kvoperator.status import SELECTOR_LABEL

log = logging.getLogger("kvoperator.kube")

CLIENT_PORT, PEER_PORT, METRICS_PORT = 2379, 2380, 2381
DATA_MOUNT = "/var/lib/datastore"
TLS_MOUNT = "/etc/datastore/tls"
ROLE_LABEL = "datastore.dev/role"  # "voter" | "learner"; the client Service selects voters
ORDINAL_LABEL = "datastore.dev/ordinal"
IMAGE_UID = 65532  # the Containerfile's datastore user
MANAGED_BY = {"app.kubernetes.io/managed-by": "kvoperator"}
WATCH_TIMEOUT_S = 300


# ---- object builders (pure) ------------------------------------------------------------

def labels(s: ClusterSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "datastore", "app.kubernetes.io/instance": s.name,
            "app.kubernetes.io/component": "member", SELECTOR_LABEL: s.name, **MANAGED_BY}


def selector(s: ClusterSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "datastore", SELECTOR_LABEL: s.name}


def owner_ref(s: ClusterSpec) -> dict[str, Any]:
    return {"apiVersion": f"{specmod.GROUP}/{specmod.VERSION}", "kind": specmod.KIND, "name": s.name,
            "uid": s.uid, "controller": True, "blockOwnerDeletion": True}


def headless_name(s: ClusterSpec) -> str:
    return f"{s.name}-headless"


def member_name(s: ClusterSpec, i: int) -> str:
    return f"{s.name}-{i}"


def pvc_name(s: ClusterSpec, i: int) -> str:
    return f"data-{member_name(s, i)}"


def host(s: ClusterSpec, i: int) -> str:
    return f"{member_name(s, i)}.{headless_name(s)}.{s.namespace}.svc"


def client_url(s: ClusterSpec, i: int) -> str:
    scheme = "https" if s.tls.server_secret_name else "http"
    return f"{scheme}://{host(s, i)}:{CLIENT_PORT}"


def peer_url(s: ClusterSpec, i: int) -> str:
    scheme = "https" if s.tls.peer_secret_name else "http"
    return f"{scheme}://{host(s, i)}:{PEER_PORT}"


def quota_bytes(storage_size: str) -> int:
    """Half of the PVC size (a Kubernetes quantity), at most etcd's suggested 8 GiB."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
             "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
    q = storage_size.strip()
    for suffix in sorted(units, key=len, reverse=True):
        if q.endswith(suffix):
            total = float(q[: -len(suffix)]) * units[suffix]
            break
    else:
        total = float(q)
    return int(min(total / 2, 8 * 2**30))


class DNSURLs:
    """Member URLs from the pods' stable DNS names (what runs in a real cluster)."""

    def client_url(self, s: ClusterSpec, i: int) -> str:
        return client_url(s, i)

    def peer_url(self, s: ClusterSpec, i: int) -> str:
        return peer_url(s, i)

    def ordinal_of(self, s: ClusterSpec, url: str) -> int | None:
        parts = (urlparse(url).hostname or "").split(".")
        if len(parts) < 2 or parts[1] != headless_name(s) or not parts[0].startswith(f"{s.name}-"):
            return None
        tail = parts[0][len(s.name) + 1:]
        return int(tail) if tail.isdigit() else None


def member_pod(s: ClusterSpec, i: int, initial_cluster: str, state: str, learner: bool,
               urls: DNSURLs | None = None) -> dict[str, Any]:
    urls = urls or DNSURLs()
    name = member_name(s, i)
    cscheme = "https" if s.tls.server_secret_name else "http"
    pscheme = "https" if s.tls.peer_secret_name else "http"
    args = [
        f"--name={name}",
        f"--data-dir={DATA_MOUNT}/data",
        f"--listen-client-urls={cscheme}://0.0.0.0:{CLIENT_PORT}",
        f"--advertise-client-urls={urls.client_url(s, i)}",
        f"--listen-peer-urls={pscheme}://0.0.0.0:{PEER_PORT}",
        f"--initial-advertise-peer-urls={urls.peer_url(s, i)}",
        f"--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-state={state}",
        f"--initial-cluster-token={s.name}.{s.namespace}",
        # Under the volume size (the raft log and compactions need room too), and an hour
        # of history kept, as manifests/static does.
        f"--quota-backend-bytes={quota_bytes(s.storage_size)}",
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=1h",
    ]
    mounts: list[dict[str, Any]] = [{"name": "data", "mountPath": DATA_MOUNT},
                                    {"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": pvc_name(s, i)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    for kind, secret, flags in (
            ("server", s.tls.server_secret_name,
             ("--cert-file", "--key-file", "--trusted-ca-file", "--client-cert-auth")),
            ("peer", s.tls.peer_secret_name,
             ("--peer-cert-file", "--peer-key-file", "--peer-trusted-ca-file", "--peer-client-cert-auth"))):
        if not secret:
            continue
        d = f"{TLS_MOUNT}/{kind}"
        args += [f"{flags[0]}={d}/tls.crt", f"{flags[1]}={d}/tls.key", f"{flags[2]}={d}/ca.crt", flags[3]]
        mounts.append({"name": f"{kind}-tls", "mountPath": d, "readOnly": True})
        volumes.append({"name": f"{kind}-tls", "secret": {"secretName": secret, "defaultMode": 0o440}})
    resources = dict(s.resources) or {"requests": {"cpu": "100m", "memory": "256Mi"},
                                      "limits": {"memory": "512Mi"}}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": s.namespace,
            "labels": {**labels(s), ORDINAL_LABEL: str(i), ROLE_LABEL: "learner" if learner else "voter"},
            "annotations": {"datastore.dev/initial-cluster-state": state},
            "ownerReferences": [owner_ref(s)],
        },
        "spec": {
            "hostname": name, "subdomain": headless_name(s),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,  # DATASTORE_* service variables would read as flags
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "securityContext": {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID,
                                "fsGroup": IMAGE_UID, "fsGroupChangePolicy": "OnRootMismatch",
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                   "labelSelector": {"matchLabels": selector(s)}}}]}},
            "containers": [{
                "name": "datastore", "image": s.image_ref, "imagePullPolicy": "IfNotPresent",
                "command": ["datastore", "serve"], "args": args,
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE",
                         "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "PYTHONUNBUFFERED", "value": "1"}],
                "ports": [{"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
                          {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
                "startupProbe": {"httpGet": {"path": "/livez", "port": "metrics"},
                                 "periodSeconds": 2, "failureThreshold": 60},
                "livenessProbe": {"httpGet": {"path": "/livez", "port": "metrics"}, "periodSeconds": 10,
                                  "timeoutSeconds": 5, "failureThreshold": 6},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5,
                                   "timeoutSeconds": 5, "failureThreshold": 3},
                "resources": resources,
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    }


def member_pvc(s: ClusterSpec, i: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": s.storage_size}}}
    if s.storage_class:
        spec["storageClassName"] = s.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": pvc_name(s, i), "namespace": s.namespace,
                         "labels": {**labels(s), ORDINAL_LABEL: str(i)},
                         "ownerReferences": [owner_ref(s)]},
            "spec": spec}


def headless_service(s: ClusterSpec) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": headless_name(s), "namespace": s.namespace, "labels": labels(s),
                         "ownerReferences": [owner_ref(s)]},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector(s),
                     "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": "client"},
                               {"name": "peer", "port": PEER_PORT, "targetPort": "peer"},
                               {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}]}}


def client_service(s: ClusterSpec) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace, "labels": labels(s),
                         "ownerReferences": [owner_ref(s)]},
            "spec": {"type": "ClusterIP", "selector": {**selector(s), ROLE_LABEL: "voter"},
                     "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": "client"}]}}


def pdb(s: ClusterSpec, voters: int) -> dict[str, Any]:
    """Voluntary disruptions keep a quorum of voters; a 1-member cluster is not blocked."""
    spec: dict[str, Any] = {"selector": {"matchLabels": {**selector(s), ROLE_LABEL: "voter"}}}
    if voters > 1:
        spec["minAvailable"] = quorum(voters)
    else:
        spec["maxUnavailable"] = 1
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": s.name, "namespace": s.namespace, "labels": labels(s),
                         "ownerReferences": [owner_ref(s)]},
            "spec": spec}


def pod_workload(ordinal: int, pod: Mapping[str, Any] | None, has_data: bool) -> Workload:
    """Pod phase and container state -> the planner's view of the slot."""
    if pod is None:
        return Workload(ordinal, Phase.MISSING, 0, has_data)
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return Workload(ordinal, Phase.PENDING, 0, has_data)  # terminating
    st = pod.get("status") or {}
    phase = st.get("phase", "Pending")
    cs = (st.get("containerStatuses") or [{}])[0]
    restarts = int(cs.get("restartCount", 0))
    if phase in ("Failed", "Succeeded"):
        return Workload(ordinal, Phase.EXITED, restarts, has_data)
    if phase == "Running" and (cs.get("state") or {}).get("running") is not None:
        # kubelet restart counts never go down: only a member that is not ready now counts
        # as crash-looping (the planner also requires it to be unhealthy).
        return Workload(ordinal, Phase.RUNNING, 0 if cs.get("ready") else restarts, has_data)
    # Pending, or waiting to be restarted (CrashLoopBackOff): kubelet restarts it, not us.
    return Workload(ordinal, Phase.PENDING, restarts, has_data)


# ---- list-watch --------------------------------------------------------------------------

def _status_of(e: BaseException) -> int | None:
    return getattr(e, "status", None)


class ListWatch:
    """A cache of one kind of object kept by list + watch; relists on 410 Gone.

    ``list_fn(**kw)`` returns a list object (model or dict), ``watch_fn(list_fn, **kw)``
    iterates watch events ``{"type": ..., "raw_object": {...}}`` and may raise an
    ApiException with status 410 when the resourceVersion is too old.
    """

    def __init__(self, what: str, list_fn: Callable[..., Any], watch_fn: Callable[..., Iterator[Any]],
                 to_dict: Callable[[Any], Any], on_change: Callable[[], None] = lambda: None,
                 **kwargs: Any) -> None:
        self.what = what
        self.list_fn = list_fn
        self.watch_fn = watch_fn
        self.to_dict = to_dict
        self.on_change = on_change
        self.kwargs = kwargs
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.resource_version = ""
        self.relists = 0
        self.lock = threading.Lock()
        self.synced = threading.Event()

    @staticmethod
    def key(obj: Mapping[str, Any]) -> tuple[str, str]:
        m = obj.get("metadata") or {}
        return (m.get("namespace") or "", m.get("name") or "")

    def relist(self) -> None:
        lst = self.to_dict(self.list_fn(**self.kwargs))
        items = {self.key(o): o for o in lst.get("items") or []}
        with self.lock:
            self.cache = items
            self.resource_version = (lst.get("metadata") or {}).get("resourceVersion", "")
        self.relists += 1
        self.synced.set()
        log.info("listed", extra={"kind": self.what, "count": len(items),
                                  "resource_version": self.resource_version})
        self.on_change()

    def watch_once(self) -> None:
        """One watch request from the current resourceVersion; relist if it is gone."""
        try:
            for ev in self.watch_fn(self.list_fn, resource_version=self.resource_version,
                                    timeout_seconds=WATCH_TIMEOUT_S, allow_watch_bookmarks=True,
                                    **self.kwargs):
                self.apply(ev)
        except Exception as e:
            if _status_of(e) != 410:
                raise
            log.info("watch expired (410 Gone): relisting", extra={"kind": self.what})
            self.relist()

    def apply(self, ev: Mapping[str, Any]) -> None:
        obj = ev.get("raw_object") or self.to_dict(ev.get("object"))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        kind = ev.get("type")
        with self.lock:
            if rv:
                self.resource_version = rv
            if kind == "BOOKMARK":
                return
            if kind == "DELETED":
                self.cache.pop(self.key(obj), None)
            elif kind in ("ADDED", "MODIFIED"):
                self.cache[self.key(obj)] = obj
        self.on_change()

    def run(self, stop: threading.Event) -> None:
        """The watch thread: list, then watch, forever; back off on errors."""
        delay = 1.0
        while not stop.is_set():
            try:
                if not self.synced.is_set():
                    self.relist()
                self.watch_once()
                delay = 1.0
            except Exception as e:
                log.warning("list-watch failed; retrying", extra={"kind": self.what, "error": str(e),
                                                                  "retry_in_s": delay})
                self.synced.clear()  # relist after an error: events may have been missed
                stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def get(self, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.cache.get((ns, name))

    def items(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.cache.values())


# ---- the platform ----------------------------------------------------------------------

class KubeClients:
    """The ``kubernetes`` client surface the operator uses (a stand-in replaces it in tests)."""

    def __init__(self, core: Any, policy: Any, custom: Any,
                 watch_fn: Callable[..., Iterator[Any]], to_dict: Callable[[Any], Any]) -> None:
        self.core = core
        self.policy = policy
        self.custom = custom
        self.watch_fn = watch_fn
        self.to_dict = to_dict


def clients_from(api: Any) -> KubeClients:
    """The operator's client surface over one ``kubernetes.client.ApiClient``."""
    from kubernetes import client, watch

    def watch_fn(fn: Callable[..., Any], **kw: Any) -> Iterator[Any]:
        # timeout_seconds makes stream() raise 410 to us instead of retrying on its own.
        return iter(watch.Watch().stream(fn, **kw))
    return KubeClients(client.CoreV1Api(api), client.PolicyV1Api(api), client.CustomObjectsApi(api),
                       watch_fn, api.sanitize_for_serialization)


def real_clients(kubeconfig: str | None = None) -> KubeClients:
    from kubernetes import client, config

    try:
        if kubeconfig:
            config.load_kube_config(kubeconfig)
        else:
            config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return clients_from(client.ApiClient())


class KubernetesPlatform:
    """The Platform of one DatastoreCluster, over the caches and the client surface."""

    def __init__(self, k: KubeClients, crs: ListWatch, pods: ListWatch, namespace: str, name: str,
                 urls: DNSURLs | None = None) -> None:
        self.urls = urls or DNSURLs()
        self.k = k
        self.crs = crs
        self.pods = pods
        self.namespace = namespace
        self.name = name
        self.spec: ClusterSpec | None = None
        self.observed: Observed | None = None

    async def load_spec(self) -> ClusterSpec | None:
        obj = self.crs.get(self.namespace, self.name)
        if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
            return None
        try:
            self.spec = specmod.parse(obj)
        except specmod.SpecError as e:
            log.warning("DatastoreCluster not valid; fix it", extra={"cluster": self.name, "error": str(e)})
            return None
        return self.spec

    def _s(self) -> ClusterSpec:
        assert self.spec is not None
        return self.spec

    def client_url(self, ordinal: int) -> str:
        return self.urls.client_url(self._s(), ordinal)

    def peer_url(self, ordinal: int) -> str:
        return self.urls.peer_url(self._s(), ordinal)

    def ordinal_of(self, url: str) -> int | None:
        return self.urls.ordinal_of(self._s(), url)

    def _my_pods(self) -> dict[int, dict[str, Any]]:
        out = {}
        for p in self.pods.items():
            md = p.get("metadata") or {}
            lb = md.get("labels") or {}
            if md.get("namespace") == self.namespace and lb.get(SELECTOR_LABEL) == self.name \
                    and str(lb.get(ORDINAL_LABEL, "")).isdigit():
                out[int(lb[ORDINAL_LABEL])] = p
        return out

    async def _pvcs(self, terminating: bool = False) -> dict[int, dict[str, Any]]:
        """The members' PVCs by ordinal; those being deleted only if ``terminating``."""
        lst = await asyncio.to_thread(self.k.core.list_namespaced_persistent_volume_claim, self.namespace,
                                      label_selector=f"{SELECTOR_LABEL}={self.name}")
        out = {}
        for c in self.k.to_dict(lst).get("items") or []:
            md = c.get("metadata") or {}
            o = str((md.get("labels") or {}).get(ORDINAL_LABEL, ""))
            if o.isdigit() and (terminating or not md.get("deletionTimestamp")):
                out[int(o)] = c
        return out

    async def workloads(self) -> dict[int, Workload]:
        pods, pvcs = self._my_pods(), await self._pvcs()
        return {i: pod_workload(i, pods.get(i), i in pvcs) for i in sorted(set(pods) | set(pvcs))}

    async def start_member(self, ordinal: int, initial_cluster: str, state: str) -> None:
        """Its PVC, then its pod. A deleted PVC or pod of the same name lingers while it
        terminates (a PVC's ``kubernetes.io/pvc-protection`` finalizer holds it until no pod
        uses it); creating it again then would be refused with 409 AlreadyExists, so this
        waits (NotYet) until it is gone."""
        s = self._s()
        ns = self.namespace
        claim, pod_name = pvc_name(s, ordinal), member_name(s, ordinal)
        pvc = (await self._pvcs(terminating=True)).get(ordinal)
        if pvc is not None and pvc["metadata"].get("deletionTimestamp"):
            held = ", ".join(pvc["metadata"].get("finalizers") or []) or "no finalizers"
            raise NotYet(f"PVC {claim} is still being deleted (held by {held}); a new one is "
                         "created once it is gone")
        old = self._my_pods().get(ordinal)
        if old is not None and old["metadata"].get("deletionTimestamp"):
            raise NotYet(f"pod {pod_name} is still terminating; it is created again once it is gone")
        if pvc is None:
            await self._create(self.k.core.create_namespaced_persistent_volume_claim, member_pvc(s, ordinal))
        if old is not None:
            if (old.get("status") or {}).get("phase") not in ("Failed", "Succeeded"):
                return  # it exists and runs (or is starting): nothing to do
            await asyncio.to_thread(self.k.core.delete_namespaced_pod, pod_name, ns)
            return  # recreated next pass, once the deletion is observed
        learner = any(m.is_learner for m in (self.observed.members or ()) if m.ordinal == ordinal) \
            if self.observed is not None else False
        await self._create(self.k.core.create_namespaced_pod,
                           member_pod(s, ordinal, initial_cluster, state, learner, self.urls))

    async def _create(self, create: Callable[..., Any], obj: dict[str, Any]) -> None:
        """Create; an object of that name that this pass did not see (still terminating, or
        not in our cache yet) is a wait, not a failure."""
        try:
            await asyncio.to_thread(create, self.namespace, obj)
        except Exception as e:
            if _status_of(e) != 409:
                raise
            raise NotYet(f"{obj['kind']} {obj['metadata']['name']} already exists (still terminating, "
                         "or not seen yet); trying again next pass") from e

    async def delete_member(self, ordinal: int, delete_data: bool) -> None:
        s = self._s()
        if ordinal in self._my_pods():
            await self._ignore_404(self.k.core.delete_namespaced_pod, member_name(s, ordinal), self.namespace)
        if delete_data:
            await self._ignore_404(self.k.core.delete_namespaced_persistent_volume_claim,
                                   pvc_name(s, ordinal), self.namespace)

    @staticmethod
    async def _ignore_404(fn: Callable[..., Any], *args: Any) -> None:
        try:
            await asyncio.to_thread(fn, *args)
        except Exception as e:
            if _status_of(e) != 404:
                raise

    async def _create_or_patch(self, create: Callable[..., Any], patch: Callable[..., Any],
                               obj: dict[str, Any], clear: tuple[str, ...] = (),
                               exists: bool = False) -> None:
        """Create, or patch the spec of the one that exists (or turns out to: 409). A patch
        merges, so fields named in ``clear`` that ``obj`` leaves out are sent as null to
        remove them."""
        if not exists:
            try:
                await asyncio.to_thread(create, self.namespace, obj)
                return
            except Exception as e:
                if _status_of(e) != 409:
                    raise
        spec = {**dict.fromkeys(clear), **obj["spec"]}
        # the labels too: they are how the next pass finds it (a Service lists by them)
        await asyncio.to_thread(patch, obj["metadata"]["name"], self.namespace,
                                {"metadata": {"labels": obj["metadata"]["labels"]}, "spec": spec})

    async def sync(self, o: Observed) -> None:
        """Services and PDB exist; pod role labels follow the member list (learner/voter)."""
        self.observed = o
        s = self._s()
        sel = f"{SELECTOR_LABEL}={s.name}"
        # Level-triggered like the rest: a Service or PDB deleted by hand comes back next pass.
        have = {x["metadata"]["name"] for x in self.k.to_dict(await asyncio.to_thread(
            self.k.core.list_namespaced_service, self.namespace, label_selector=sel)).get("items") or []}
        for svc in (headless_service(s), client_service(s)):
            if svc["metadata"]["name"] not in have:
                await self._create_or_patch(self.k.core.create_namespaced_service,
                                            self.k.core.patch_namespaced_service, svc)
        voters = sum(1 for m in o.members or () if not m.is_learner) if o.members is not None else 0
        if voters:
            budgets = {x["metadata"]["name"]: x for x in self.k.to_dict(await asyncio.to_thread(
                self.k.policy.list_namespaced_pod_disruption_budget, self.namespace,
                label_selector=sel)).get("items") or []}
            want = pdb(s, voters)
            if (budgets.get(s.name) or {}).get("spec") != want["spec"]:
                # minAvailable and maxUnavailable exclude each other (the API server refuses
                # both): a change from one to the other must remove the old one.
                await self._create_or_patch(self.k.policy.create_namespaced_pod_disruption_budget,
                                            self.k.policy.patch_namespaced_pod_disruption_budget, want,
                                            clear=("minAvailable", "maxUnavailable"),
                                            exists=s.name in budgets)
        if o.members is None:
            return
        pods = self._my_pods()
        for m in o.members:
            pod = pods.get(m.ordinal) if m.ordinal is not None else None
            if pod is None:
                continue
            want = "learner" if m.is_learner else "voter"
            if (pod["metadata"].get("labels") or {}).get(ROLE_LABEL) != want:
                await asyncio.to_thread(self.k.core.patch_namespaced_pod, pod["metadata"]["name"],
                                        self.namespace, {"metadata": {"labels": {ROLE_LABEL: want}}})

    async def previous_status(self) -> Mapping[str, Any] | None:
        obj = self.crs.get(self.namespace, self.name)
        return (obj or {}).get("status")

    async def publish_status(self, status: Mapping[str, Any]) -> None:
        if self.crs.get(self.namespace, self.name) is None:
            return  # deleted since this pass read it: nothing to report to
        try:
            await asyncio.to_thread(self.k.custom.patch_namespaced_custom_object_status,
                                    specmod.GROUP, specmod.VERSION, self.namespace, specmod.PLURAL,
                                    self.name, {"status": dict(status)})
        except Exception as e:
            if _status_of(e) != 404:
                raise
            # deleted between the watch's last word and this patch: the next pass lets go
            log.info("cluster deleted before its status was written",
                     extra={"cluster": self.name, "namespace": self.namespace})
            return
        obj = self.crs.get(self.namespace, self.name)
        if obj is not None:  # our own write: the watch will confirm it; keep the cache current
            obj["status"] = dict(status)

    async def record(self, action: Action, outcome: str, message: str) -> None:
        s = self._s()
        now = now_rfc3339()
        ev = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{s.name}.", "namespace": self.namespace},
            "involvedObject": {"apiVersion": f"{specmod.GROUP}/{specmod.VERSION}", "kind": specmod.KIND,
                               "name": s.name, "namespace": self.namespace, "uid": s.uid},
            "reason": action.kind.value, "message": message[:1000],
            "type": "Warning" if outcome == "failed" or action.kind is ActionKind.DEGRADED else "Normal",
            "source": {"component": "kvoperator"}, "reportingComponent": "kvoperator",
            "reportingInstance": os.environ.get("POD_NAME", "kvoperator"),
            "action": action.kind.value, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await asyncio.to_thread(self.k.core.create_namespaced_event, self.namespace, ev)
        except Exception as e:  # an Event is a courtesy; never fail the action over it
            log.warning("could not record an Event", extra={"cluster": s.name, "error": str(e)})


class KubeOperator:
    """Watches DatastoreClusters and member pods; reconciles every cluster, one action each."""

    def __init__(self, k: KubeClients, api: ClusterAPI, namespace: str | None = None,
                 interval: float = 5.0, urls: DNSURLs | None = None) -> None:
        self.urls = urls
        self.k = k
        self.api = api
        self.interval = interval
        self.wake = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        g, v, pl = specmod.GROUP, specmod.VERSION, specmod.PLURAL
        sel = "app.kubernetes.io/managed-by=kvoperator"
        if namespace:
            self.crs = ListWatch("DatastoreCluster", k.custom.list_namespaced_custom_object, k.watch_fn,
                                 k.to_dict, self._changed, group=g, version=v, namespace=namespace,
                                 plural=pl)
            self.pods = ListWatch("Pod", k.core.list_namespaced_pod, k.watch_fn, k.to_dict, self._changed,
                                  namespace=namespace, label_selector=sel)
        else:
            self.crs = ListWatch("DatastoreCluster", k.custom.list_cluster_custom_object, k.watch_fn,
                                 k.to_dict, self._changed, group=g, version=v, plural=pl)
            self.pods = ListWatch("Pod", k.core.list_pod_for_all_namespaces, k.watch_fn, k.to_dict,
                                  self._changed, label_selector=sel)
        self.reconcilers: dict[tuple[str, str], Reconciler] = {}
        self.metrics = OperatorMetrics()
        self.last_pass = 0.0

    def _changed(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.wake.set)

    async def pass_once(self) -> dict[tuple[str, str], Action | None]:
        """Reconcile every known cluster once (one action at most per cluster)."""
        out: dict[tuple[str, str], Action | None] = {}
        if not (self.crs.synced.is_set() and self.pods.synced.is_set()):
            return out  # an empty cache is not an empty cluster: never bootstrap from it
        keys = {ListWatch.key(o) for o in self.crs.items()}
        for key in list(self.reconcilers):
            if key not in keys:
                gone = self.reconcilers.pop(key)  # deleted: owner references clean up its objects
                self.metrics.forget("/".join(key))
                if isinstance(gone.api, ClientClusterAPI) and gone.api is not self.api:
                    await gone.api.close()
        for key in sorted(keys):
            rec = self.reconcilers.get(key)
            if rec is None:
                # each cluster's calls on a client of its own (stand-ins in tests are shared)
                api = self.api.for_cluster() if isinstance(self.api, ClientClusterAPI) else self.api
                rec = Reconciler(KubernetesPlatform(self.k, self.crs, self.pods, *key, urls=self.urls),
                                 api, metrics=self.metrics, cluster="/".join(key))
                self.reconcilers[key] = rec
            try:
                out[key] = await rec.reconcile_once()
            except Exception:
                log.exception("reconcile failed", extra={"namespace": key[0], "cluster": key[1]})
                out[key] = None
        self.last_pass = time.monotonic()
        return out

    async def run(self, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        tstop = threading.Event()
        threads = [threading.Thread(target=lw.run, args=(tstop,), name=f"watch-{lw.what}", daemon=True)
                   for lw in (self.crs, self.pods)]
        for t in threads:
            t.start()
        try:
            while not stop.is_set():
                results = await self.pass_once()
                busy = any(a is not None and a.changes_something for a in results.values())
                self.wake.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
                await asyncio.wait(waiters, timeout=1.0 if busy else self.interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
        finally:
            tstop.set()


async def serve_health(op: KubeOperator, port: int, host: str = "0.0.0.0") -> asyncio.AbstractServer:
    """``/healthz`` for the Deployment's probes (200 while reconcile passes keep running),
    ``/metrics`` (kvoperator.metrics) and the console (``/dashboard``), on the Deployment's
    ``http`` port."""
    from datastore.metrics.serve import metrics_route, serve_http

    def healthz() -> tuple[int, str, str]:
        ok = op.last_pass and time.monotonic() - op.last_pass < max(60.0, 6 * op.interval)
        return (200, "text/plain", "ok\n") if ok else (503, "text/plain", "no reconcile pass lately\n")
    from datastore.console.web import Console
    from kvoperator.console import operator_view

    console = Console("operator", operator_view(lambda: list(op.reconcilers.values())))
    return await serve_http(host, port, {"/healthz": healthz,
                                         "/metrics": metrics_route(op.metrics.registry)},
                            console=console)


async def run_kubernetes(stop: asyncio.Event, namespace: str | None = None, kubeconfig: str | None = None,
                         interval: float = 5.0, health_port: int = 8080, tls: object | None = None,
                         user: str | None = None, password: str | None = None) -> None:
    api = ClientClusterAPI(tls=tls, user=user, password=password)
    op = KubeOperator(real_clients(kubeconfig), api, namespace, interval)
    server = await serve_health(op, health_port)
    log.info("operator started", extra={"platform": "kubernetes", "namespace": namespace or "(all)",
                                        "health_port": health_port})
    try:
        await op.run(stop)
    finally:
        server.close()
        await api.close()
