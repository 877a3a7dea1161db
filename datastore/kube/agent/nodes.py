"""The agent's Nodes: registered with their capacity, kept alive by a Lease in
``kube-node-lease`` renewed every 10 s (what kube-controller-manager's node lifecycle
controller watches), with a Ready condition refreshed every minute."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from datastore.kube.agent.client import ApiError, Client, path_of
from datastore.testing.refs import KUBE_VERSION

AGENT_LABEL = "datastore.dev/agent-node"
LEASE_SECONDS = 40
LEASE_PATH = "coordination.k8s.io/v1/leases"


def _micro(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def register(client: Client, name: str, allocatable: dict[str, str], logs_port: int) -> dict[str, Any]:
    """Create the Node (or take over an existing one of that name) and report it Ready."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "type": "agent", AGENT_LABEL: "true"}
    try:
        node = client.post(path_of("nodes"), {"apiVersion": "v1", "kind": "Node",
                                              "metadata": {"name": name, "labels": labels}})
    except ApiError as e:
        if e.status != 409:
            raise
        node = client.patch(path_of("nodes", name=name), {"metadata": {"labels": labels}})
    report(client, name, allocatable, logs_port)
    return node


def report(client: Client, name: str, allocatable: dict[str, str], logs_port: int) -> None:
    t = _seconds(datetime.now(UTC))

    def cond(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message,
                "lastHeartbeatTime": t, "lastTransitionTime": t}

    status = {
        "capacity": allocatable, "allocatable": allocatable,
        "conditions": [cond("MemoryPressure", False, "KubeletHasSufficientMemory", "agent has memory"),
                       cond("DiskPressure", False, "KubeletHasNoDiskPressure", "agent has disk"),
                       cond("PIDPressure", False, "KubeletHasSufficientPID", "agent has PIDs"),
                       cond("Ready", True, "KubeletReady", "datastore kube agent is posting ready status")],
        # Only the address: the API server reaches the node (kubectl logs) by the first of
        # Hostname and InternalIP, and the node's name is not in any DNS here.
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"$patch": "replace"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": logs_port}},
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                     "osImage": "datastore kube agent", "containerRuntimeVersion": "agent://1",
                     "kubeletVersion": KUBE_VERSION, "kubeProxyVersion": "",
                     "operatingSystem": "linux", "architecture": "amd64"},
    }
    node = client.get(path_of("nodes", name=name))
    old = {c["type"]: c for c in (node.get("status") or {}).get("conditions") or []}
    for c in status["conditions"]:  # a transition time moves only on a transition
        prev = old.get(c["type"])
        if prev is not None and prev.get("status") == c["status"]:
            c["lastTransitionTime"] = prev.get("lastTransitionTime") or t
    client.patch(path_of("nodes", name=name, sub="status"), {"status": status}, kind="strategic-merge")


def renew_lease(client: Client, name: str, node_uid: str) -> None:
    now = _micro(datetime.now(UTC))
    path = path_of(LEASE_PATH, "kube-node-lease", name)
    try:
        client.patch(path, {"spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                                     "renewTime": now}})
        return
    except ApiError as e:
        if e.status != 404:
            raise
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": name, "namespace": "kube-node-lease",
                          "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                                               "uid": node_uid}]},
             "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}}
    client.post(path_of(LEASE_PATH, "kube-node-lease"), lease)
