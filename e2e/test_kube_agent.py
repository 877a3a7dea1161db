"""``datastore kube agent`` as a kubelet stand-in: what a pod sees (variables from the
downward API, ConfigMap/Secret/downward files and the service-account token at their
container paths, its own host name and address), restarts with back-off, an exec liveness
probe, graceful deletion, and a claim's directory outliving its pods but not the claim.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kube_util import kjson, kubectl, running, wait_for

from datastore.kube.controlplane import ControlPlane

NS = "agent"
IMAGE = "ghcr.io/datastore/datastore:0.1.0"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running(tmp_path_factory.mktemp("kube-agent"), nodes=0, agent_nodes=1) as plane:
        kubectl(plane, "create", "namespace", NS)
        wait_for(lambda: kubectl(plane, "-n", NS, "get", "sa", "default", check=False).returncode == 0,
                 60, "the default service account")
        yield plane


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "app", "image": IMAGE, "command": ["sh", "-c", script],
                 **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS,
                                                            "labels": {"app": name}},
            "spec": {"containers": [container], **spec}}


def apply(cp: ControlPlane, *objs: dict[str, Any]) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": list(objs)}
    kubectl(cp, "apply", "-f", "-", input=json.dumps(items))


def get(cp: ControlPlane, name: str) -> dict[str, Any]:
    return kjson(cp, "-n", NS, "get", "pod", name)


def logs(cp: ControlPlane, name: str) -> list[str]:
    """``kubectl logs``, by line; empty until the container has written a log."""
    return kubectl(cp, "-n", NS, "logs", name, check=False).stdout.splitlines()


def test_what_a_pod_sees(cp: ControlPlane) -> None:
    kubectl(cp, "-n", NS, "create", "configmap", "cfg", "--from-literal=greeting=hello")
    kubectl(cp, "-n", NS, "create", "secret", "generic", "sec", "--from-literal=password=s3cret")
    script = ('echo "name=$POD_NAME ns=$POD_NS ip=$POD_IP node=$NODE exp=$EXPANDED mem=$MEM";'
              'echo "host=$(hostname) cfg=$(cat /etc/cfg/greeting) pw=$(cat /etc/sec/password)";'
              'echo "labels=$(cat /etc/info/labels)";'
              'echo "sa-ns=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)";'
              'echo "api=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT";'
              # the default service account may do nothing: RBAC is the API server's
              'python3 -c "from kubernetes import client, config; config.load_incluster_config();'
              "client.CoreV1Api().list_namespaced_secret('agent')\" 2>&1 | grep -o Forbidden | head -1;"
              'touch /scratch/here; echo ready; sleep 3600')
    field = lambda path: {"valueFrom": {"fieldRef": {"fieldPath": path}}}  # noqa: E731
    apply(cp, pod("sees", script, hostname="sees-host", container={
        "env": [{"name": "POD_NAME", **field("metadata.name")},
                {"name": "POD_NS", **field("metadata.namespace")},
                {"name": "POD_IP", **field("status.podIP")}, {"name": "NODE", **field("spec.nodeName")},
                {"name": "EXPANDED", "value": "x-$(POD_NAME)-$$(KEEP)"},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                                   "divisor": "1Mi"}}}],
        "resources": {"limits": {"memory": "64Mi"}},
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "sec", "mountPath": "/etc/sec"},
                         {"name": "info", "mountPath": "/etc/info"},
                         {"name": "scratch", "mountPath": "/scratch"}]},
        volumes=[{"name": "cfg", "configMap": {"name": "cfg"}},
                 {"name": "sec", "secret": {"secretName": "sec"}},
                 {"name": "info", "downwardAPI": {"items": [{"path": "labels",
                                                             "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                 {"name": "scratch", "emptyDir": {}}]))
    wait_for(lambda: "ready" in logs(cp, "sees"), 60, "the pod's output")
    p = get(cp, "sees")
    ip, out = p["status"]["podIP"], "\n".join(logs(cp, "sees"))
    assert ip.startswith("127.") and p["status"]["phase"] == "Running"
    assert f"name=sees ns={NS} ip={ip} node=agent-0 exp=x-sees-$(KEEP) mem=64" in out, out
    assert "host=sees-host cfg=hello pw=s3cret" in out, out
    assert 'labels=app="sees"' in out and f"sa-ns={NS}" in out, out
    assert f"api=127.0.0.1:{cp.apiserver_port}" in out and "Forbidden" in out.splitlines(), out
    st = p["status"]["containerStatuses"][0]
    assert st["ready"] and st["started"] and st["restartCount"] == 0 and "running" in st["state"]
    # the emptyDir is the agent's directory, seen at the container path
    scratch = cp.directory / "agent" / "pods" / f"{NS}_sees_{p['metadata']['uid']}" / "volumes" / "scratch"
    assert (scratch / "here").exists()


def test_restarts_back_off_and_liveness(cp: ControlPlane) -> None:
    apply(cp, pod("crash", "echo boom; exit 3"),
          pod("unlive", "touch /tmp/alive; sleep 2; rm /tmp/alive; sleep 3600",
              container={"livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/alive"]},
                                           "periodSeconds": 1, "failureThreshold": 2},
                         "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
              volumes=[{"name": "tmp", "emptyDir": {}}]))

    def crash_looping() -> dict[str, Any] | None:
        st = (get(cp, "crash")["status"].get("containerStatuses") or [{}])[0]
        waiting = (st.get("state") or {}).get("waiting") or {}
        return st if st.get("restartCount", 0) >= 2 and waiting.get("reason") == "CrashLoopBackOff" else None

    st = wait_for(crash_looping, 90, "crash to be in CrashLoopBackOff after 2 restarts")
    assert st["lastState"]["terminated"]["exitCode"] == 3 and not st["ready"]
    assert "back-off 20s" in st["state"]["waiting"]["message"], st  # 0 s, 10 s, then 20 s
    st = wait_for(lambda: (s := (get(cp, "unlive")["status"].get("containerStatuses") or [{}])[0])
                  .get("restartCount", 0) >= 1 and s, 60, "the liveness probe to restart unlive")
    events = kjson(cp, "-n", NS, "get", "events", "--field-selector", "involvedObject.name=unlive")["items"]
    assert any(e["reason"] == "Unhealthy" and "Liveness probe failed" in e["message"] for e in events)


def test_graceful_deletion(cp: ControlPlane) -> None:
    apply(cp, pod("graceful", 'trap "echo got TERM; exit 0" TERM; echo up; while true; do sleep 0.2; done',
                  terminationGracePeriodSeconds=20))
    wait_for(lambda: "up" in logs(cp, "graceful"), 60, "graceful to start")
    uid = get(cp, "graceful")["metadata"]["uid"]
    kubectl(cp, "-n", NS, "delete", "pod", "graceful", "--wait=true", timeout=60)
    log = (cp.directory / "agent" / "pods" / f"{NS}_graceful_{uid}" / "logs" / "app.log").read_text()
    assert "got TERM" in log.splitlines(), log


def test_claim_outlives_pods(cp: ControlPlane) -> None:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "keep", "namespace": NS},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    mounts = {"volumeMounts": [{"name": "d", "mountPath": "/var/lib/keep"}]}
    vols = [{"name": "d", "persistentVolumeClaim": {"claimName": "keep"}}]
    apply(cp, claim, pod("writer", "echo kept > /var/lib/keep/f; echo wrote; sleep 3600", container=mounts,
                         volumes=vols, terminationGracePeriodSeconds=1))
    wait_for(lambda: "wrote" in logs(cp, "writer"), 60, "writer to write")
    pv = kjson(cp, "-n", NS, "get", "pvc", "keep")["spec"]["volumeName"]
    kubectl(cp, "-n", NS, "delete", "pod", "writer", "--wait=true")
    apply(cp, pod("reader", "cat /var/lib/keep/f; sleep 3600", container=mounts, volumes=vols,
                  terminationGracePeriodSeconds=1))
    wait_for(lambda: "kept" in logs(cp, "reader"), 60, "reader to read what writer left")
    directory = cp.directory / "agent" / "volumes" / pv
    assert (directory / "f").read_text() == "kept\n"
    kubectl(cp, "-n", NS, "delete", "pod", "reader", "--wait=true")
    kubectl(cp, "-n", NS, "delete", "pvc", "keep", "--wait=true")
    wait_for(lambda: kubectl(cp, "get", "pv", pv, check=False).returncode != 0, 60, "the volume deleted")
    assert not directory.exists()
