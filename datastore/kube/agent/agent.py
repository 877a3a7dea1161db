"""The agent's loop: nodes and their leases, the provisioner, the hosts file, and one
worker per pod bound to its nodes.

Level-triggered, like a controller: list-watch caches of Pods, Services, claims and
volumes wake the loop, which compares what should run with what runs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datastore.kube.agent import network, nodes, provisioner
from datastore.kube.agent.client import ApiError, Client, path_of
from datastore.kube.agent.informer import Informer
from datastore.kube.agent.logs import LogServer
from datastore.kube.agent.network import AddressPool
from datastore.kube.agent.pods import PodWorker, is_terminal
from datastore.kube.controlplane import ControlPlane, KubeError
from datastore.kube.pki import Pki

log = logging.getLogger("datastore.kube.agent")

LEASE_RENEW_S = 10.0
NODE_STATUS_S = 60.0
STOP_GRACE_CAP_S = 10.0  # when the agent itself stops, pods get at most this long


@dataclass
class AgentOptions:
    directory: Path
    nodes: int = 1
    prefix: str = "agent"
    cpu: str = "4"
    memory: str = "8Gi"
    pods: str = "110"
    backoff: float = 10.0  # the first restart back-off after an immediate one (kubelet: 10 s)
    node_names: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return self.node_names or [f"{self.prefix}-{i}" for i in range(self.nodes)]


class Agent:
    def __init__(self, opts: AgentOptions) -> None:
        d = opts.directory.resolve()
        cp = ControlPlane.load(d)
        if cp is None:
            raise KubeError(f"no control plane in {d}: run `datastore kube up --dir {opts.directory}` first")
        pki = Pki(d / "pki")
        self.client = Client("127.0.0.1", cp.apiserver_port, pki.ca, *pki.client("admin"))
        self.apiserver_port = cp.apiserver_port
        self.node_names = opts.names()
        self.allocatable = {"cpu": opts.cpu, "memory": opts.memory, "pods": opts.pods,
                            "ephemeral-storage": "100Gi"}
        self.backoff_base = opts.backoff
        self.root = d / "agent"
        self.pods_dir = self.root / "pods"
        self.volumes_dir = self.root / "volumes"
        self.hosts_path = self.root / "hosts"
        for p in (self.pods_dir, self.volumes_dir):
            p.mkdir(parents=True, exist_ok=True)
        network.write_in_place(self.hosts_path, network.hosts_file([], []))
        self.addresses = AddressPool()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self.node_uids: dict[str, str] = {}
        stop = self.stopping
        self.pods = Informer(self.client, "/api/v1/pods", self.wake.set, stop)
        self.services = Informer(self.client, "/api/v1/services", self.wake.set, stop)
        self.claims = Informer(self.client, "/api/v1/persistentvolumeclaims", self.wake.set, stop)
        self.volumes = Informer(self.client, "/api/v1/persistentvolumes", self.wake.set, stop)
        self.logs = LogServer(self.pods_dir, pki)

    # ---- start and stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Register the nodes and the StorageClass and start watching; returns at once."""
        self.logs.start()
        for name in self.node_names:
            node = nodes.register(self.client, name, self.allocatable, self.logs.port)
            self.node_uids[name] = node["metadata"]["uid"]
            nodes.renew_lease(self.client, name, self.node_uids[name])
        provisioner.ensure_storage_class(self.client)
        for inf in (self.pods, self.services, self.claims, self.volumes):
            inf.start()

    def run(self, stop: threading.Event) -> None:
        self.start()
        for inf in (self.pods, self.services, self.claims, self.volumes):
            while not inf.synced.wait(0.5):
                if stop.is_set():
                    return
        last_lease = last_status = time.monotonic()
        while not stop.is_set():
            self.wake.wait(1.0)  # also the period of the lease check below
            self.wake.clear()
            t = time.monotonic()
            try:
                if t - last_lease >= LEASE_RENEW_S:
                    last_lease = t
                    for name in self.node_names:
                        nodes.renew_lease(self.client, name, self.node_uids[name])
                if t - last_status >= NODE_STATUS_S:
                    last_status = t
                    for name in self.node_names:
                        nodes.report(self.client, name, self.allocatable, self.logs.port)
                provisioner.sync(self.client, self.volumes_dir, self.claims.items(), self.volumes.items())
            except (ApiError, OSError) as e:
                log.warning("agent pass failed", extra={"error": str(e)})
            self.sync_pods()
            self.sync_hosts()
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every pod (a capped grace period) and the watches."""
        self.stopping.set()
        for w in self.workers.values():
            grace = float(w.pod["spec"].get("terminationGracePeriodSeconds", 30))
            w.request_stop(min(grace, STOP_GRACE_CAP_S))
        for w in self.workers.values():
            w.join(STOP_GRACE_CAP_S + 5)
        self.logs.stop()

    # ---- pods -----------------------------------------------------------------------------

    def sync_pods(self) -> None:
        mine = {p["metadata"]["uid"]: p for p in self.pods.items()
                if (p.get("spec") or {}).get("nodeName") in self.node_names}
        for uid, pod in mine.items():
            md = pod["metadata"]
            w = self.workers.get(uid)
            if w is None:
                if md.get("deletionTimestamp"):
                    self._finish_unstarted(pod)
                    continue
                if is_terminal(pod):
                    continue  # finished before this agent started: never run again
                w = PodWorker(self, pod)
                self.workers[uid] = w
                w.start()
            else:
                w.update(pod)
            if md.get("deletionTimestamp"):
                w.request_stop(float(md.get("deletionGracePeriodSeconds") or 0))
        for uid, w in list(self.workers.items()):
            if uid not in mine:
                w.request_stop(2.0, gone=True)  # deleted for good (forced): stop it anyway
            if w.done:
                del self.workers[uid]

    def _finish_unstarted(self, pod: dict[str, Any]) -> None:
        md = pod["metadata"]
        try:
            self.client.delete(path_of("pods", md["namespace"], md["name"]), {
                "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": md["uid"]}})
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("delete failed", extra={"pod": md["name"], "error": str(e)})

    def sync_hosts(self) -> None:
        pods = [p for p in self.pods.items() if (p.get("spec") or {}).get("nodeName") in self.node_names]
        # the workers' own view first: an address is named before its status comes back
        for i, p in enumerate(pods):
            w = self.workers.get(p["metadata"]["uid"])
            if w is not None and w.ip:
                pods[i] = {**p, "status": {**(p.get("status") or {}), "podIP": w.ip}}
        network.write_in_place(self.hosts_path, network.hosts_file(pods, self.services.items()))

    def event(self, pod: dict[str, Any], kind: str, reason: str, message: str) -> None:
        md = pod["metadata"]
        t = datetime.now(UTC)
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"generateName": f"{md['name']}.", "namespace": md["namespace"]},
              "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": md["name"],
                                 "namespace": md["namespace"], "uid": md["uid"]},
              "reason": reason, "message": message[:1000], "type": kind,
              "source": {"component": "kubelet", "host": pod["spec"].get("nodeName", "")},
              "reportingComponent": "kubelet", "reportingInstance": pod["spec"].get("nodeName", ""),
              "firstTimestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
              "lastTimestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "count": 1}
        try:
            self.client.post(path_of("events", md["namespace"]), ev)
        except (ApiError, OSError) as e:  # an Event is a courtesy
            log.debug("event not recorded", extra={"error": str(e)})
