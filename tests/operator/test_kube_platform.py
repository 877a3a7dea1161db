"""KubernetesPlatform against a recording stand-in of the ``kubernetes`` client surface.

There is no API server here. ``kvoperator.testing.FakeKube`` keeps objects by kind and
records every call; its watch replays queued events and can answer ``410 Gone``. The members' Cluster API is
unreachable in these tests (no pod runs), so the planner sees only pods and PVCs: which
is exactly the part of the decision the Kubernetes side owns.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from kvoperator import spec as specmod
from kvoperator.etcdapi import ClusterAPIError
from kvoperator.kube import (
    ROLE_LABEL,
    KubeOperator,
    KubernetesPlatform,
    ListWatch,
    client_service,
    headless_service,
    member_pod,
    member_pvc,
    pdb,
    pod_workload,
)
from kvoperator.planner import ActionKind, Member, Observed, Phase
from kvoperator.testing import ApiError, FakeKube

REPO = Path(__file__).resolve().parents[2]
NS = "prod"


def cr(size: int = 3, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
            "metadata": {"name": "db", "namespace": NS, "uid": "u-1", "generation": 4,
                         "resourceVersion": "1"},
            "spec": {"size": size, **spec}}


class Unreachable:
    """The members' Cluster API when no member process runs: every call fails."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            raise ClusterAPIError("unreachable", "connection refused")
        return fail


def spec(size: int = 3, **kw: Any) -> specmod.ClusterSpec:
    return specmod.parse(cr(size, **kw))


# ---- objects, field by field -------------------------------------------------------------

def test_member_pod_fields() -> None:
    s = spec(3, image="reg/ds:9", resources={"requests": {"cpu": "1"}})
    p = member_pod(s, 2, "db-0=http://x:2380", "existing", learner=True)
    md, ps = p["metadata"], p["spec"]
    assert md["name"] == "db-2" and md["namespace"] == NS
    assert md["labels"][ROLE_LABEL] == "learner"
    assert md["labels"]["datastore.dev/cluster"] == "db" and md["labels"]["datastore.dev/ordinal"] == "2"
    assert md["ownerReferences"] == [{"apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
                                      "name": "db", "uid": "u-1", "controller": True,
                                      "blockOwnerDeletion": True}]
    assert ps["hostname"] == "db-2" and ps["subdomain"] == "db-headless"
    assert ps["securityContext"]["runAsNonRoot"] is True
    c = ps["containers"][0]
    assert c["image"] == "reg/ds:9" and c["command"] == ["datastore", "serve"]
    assert c["resources"] == {"requests": {"cpu": "1"}}
    args = dict(a.split("=", 1) for a in c["args"] if "=" in a)
    assert args["--name"] == "db-2"
    assert args["--initial-cluster"] == "db-0=http://x:2380"
    assert args["--initial-cluster-state"] == "existing"
    assert args["--initial-advertise-peer-urls"] == "http://db-2.db-headless.prod.svc:2380"
    assert args["--advertise-client-urls"] == "http://db-2.db-headless.prod.svc:2379"
    assert args["--data-dir"] == "/var/lib/datastore/data"
    assert args["--listen-metrics-urls"] == "http://0.0.0.0:2381"
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-2"}} in ps["volumes"]
    assert args["--quota-backend-bytes"] == str(2**29)  # half of the default 1Gi volume


def test_member_pod_tls() -> None:
    s = spec(3, tls={"serverSecretName": "srv", "peerSecretName": "peer"})
    c = member_pod(s, 0, "", "new", False)["spec"]["containers"][0]
    assert "--client-cert-auth" in c["args"] and "--peer-client-cert-auth" in c["args"]
    assert "--cert-file=/etc/datastore/tls/server/tls.crt" in c["args"]
    assert "--peer-trusted-ca-file=/etc/datastore/tls/peer/ca.crt" in c["args"]
    assert "--advertise-client-urls=https://db-0.db-headless.prod.svc:2379" in c["args"]
    assert {"name": "peer-tls", "mountPath": "/etc/datastore/tls/peer", "readOnly": True} in c["volumeMounts"]


def test_pvc_services_pdb_fields() -> None:
    s = spec(3, storage={"size": "5Gi", "storageClassName": "fast"})
    c = member_pvc(s, 1)
    assert c["metadata"]["name"] == "data-db-1"
    assert c["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}},
                         "storageClassName": "fast"}
    h = headless_service(s)
    assert h["metadata"]["name"] == "db-headless"
    assert h["spec"]["clusterIP"] == "None" and h["spec"]["publishNotReadyAddresses"] is True
    assert [p["port"] for p in h["spec"]["ports"]] == [2379, 2380, 2381]
    cs = client_service(s)
    assert cs["metadata"]["name"] == "db" and cs["spec"]["selector"][ROLE_LABEL] == "voter"
    assert [p["port"] for p in cs["spec"]["ports"]] == [2379]
    assert pdb(s, 5)["spec"]["minAvailable"] == 3
    assert pdb(s, 3)["spec"]["minAvailable"] == 2
    assert pdb(s, 1)["spec"] == {"selector": {"matchLabels": {**h["spec"]["selector"], ROLE_LABEL: "voter"}},
                                 "maxUnavailable": 1}
    for obj in (c, h, cs, pdb(s, 3)):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def _shape(pod_spec: dict[str, Any]) -> dict[str, Any]:
    c = pod_spec["containers"][0]
    flags = sorted({a.split("=", 1)[0] for a in c.get("args", []) + c.get("command", [])
                    if a.startswith("--")})
    return {
        "ports": sorted((p["name"], p["containerPort"]) for p in c["ports"]),
        "probes": {k: (c[k]["httpGet"]["path"], c[k]["httpGet"]["port"])
                   for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c},
        "podSecurity": {k: pod_spec["securityContext"][k] for k in ("runAsNonRoot", "runAsUser")},
        "containerSecurity": c["securityContext"],
        "mounts": sorted(m["mountPath"] for m in c["volumeMounts"]),
        "env": sorted(e["name"] for e in c["env"] if e["name"] in ("POD_NAME", "POD_NAMESPACE",
                                                                   "PYTHONUNBUFFERED")),
        "serviceLinks": pod_spec.get("enableServiceLinks"),
        "flags": flags,
    }


def test_pod_has_the_shape_of_the_static_manifest() -> None:
    path = Path(os.environ.get("KVOP_STATIC_STATEFULSET",
                               REPO / "manifests" / "static" / "base" / "statefulset.yaml"))
    sts = yaml.safe_load(path.read_text())
    static = sts["spec"]["template"]["spec"]
    script = max(static["containers"][0]["command"], key=len)  # the sh -c script
    static_shape = _shape(static)
    ours = _shape(member_pod(spec(3), 0, "db-0=http://x:2380", "new", False)["spec"])
    static_shape["flags"] = sorted({f for line in script.splitlines() if not line.strip().startswith("#")
                                    for f in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]+)(?=\s|=|$)", line)})
    assert ours == static_shape


# ---- pod phases -> the planner's view ------------------------------------------------------

@pytest.mark.parametrize(("pod", "phase", "restarts"), [
    (None, Phase.MISSING, 0),
    ({"status": {"phase": "Pending"}}, Phase.PENDING, 0),
    ({"status": {"phase": "Running", "containerStatuses": [
        {"ready": True, "restartCount": 7, "state": {"running": {}}}]}}, Phase.RUNNING, 0),
    ({"status": {"phase": "Running", "containerStatuses": [
        {"ready": False, "restartCount": 7, "state": {"running": {}}}]}}, Phase.RUNNING, 7),
    ({"status": {"phase": "Running", "containerStatuses": [
        {"ready": False, "restartCount": 6, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}},
     Phase.PENDING, 6),
    ({"status": {"phase": "Failed"}}, Phase.EXITED, 0),
    ({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}},
     Phase.PENDING, 0),
], ids=["none", "pending", "running-ready", "running-not-ready", "crashloop", "failed", "terminating"])
def test_pod_workload(pod: dict[str, Any] | None, phase: Phase, restarts: int) -> None:
    w = pod_workload(0, pod, True)
    assert (w.phase, w.restarts, w.has_data) == (phase, restarts, True)


# ---- the operator: list-watch, passes, reactions ----------------------------------------

def operator(kube: FakeKube, api: Any = None) -> KubeOperator:
    op = KubeOperator(kube.clients(), api or Unreachable(), namespace=None)
    op.crs.relist()
    op.pods.relist()
    return op


def test_bootstrap_creates_pvc_pod_services_pdb_status_event() -> None:
    kube = FakeKube()
    kube.store["cr"][(NS, "db")] = cr(3)
    op = operator(kube)
    res = asyncio.run(op.pass_once())
    assert res[(NS, "db")].kind is ActionKind.BOOTSTRAP  # type: ignore[union-attr]
    (ns, pvc), = kube.made("create_namespaced_persistent_volume_claim")
    assert ns == NS and pvc["metadata"]["name"] == "data-db-0"
    (ns, pod), = kube.made("create_namespaced_pod")
    args = pod["spec"]["containers"][0]["args"]
    assert "--initial-cluster-state=new" in args
    assert "--initial-cluster=db-0=http://db-0.db-headless.prod.svc:2380" in args
    assert sorted(b["metadata"]["name"] for _, b in kube.made("create_namespaced_service")) == \
        ["db", "db-headless"]
    assert not kube.made("create_namespaced_pod_disruption_budget")  # no member list yet
    (g, v, ns, plural, name, body), = kube.made("patch_namespaced_custom_object_status")
    assert (g, v, ns, plural, name) == ("datastore.dev", "v1alpha1", NS, "datastoreclusters", "db")
    st = body["status"]
    assert st["observedGeneration"] == 4 and st["selector"] == "datastore.dev/cluster=db"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Available"]["status"] == "False" and conds["Progressing"]["reason"] == "Bootstrapping"
    (ns, ev), = kube.made("create_namespaced_event")
    assert ev["reason"] == "Bootstrap" and ev["type"] == "Normal"
    # level-triggered: a Service deleted by hand is created again on the next pass
    kube.core.delete_namespaced_service("db", NS)
    asyncio.run(op.pass_once())
    assert [b["metadata"]["name"] for _, b in kube.made("create_namespaced_service")][2:] == ["db"]
    assert ev["involvedObject"] == {"apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
                                    "name": "db", "namespace": NS, "uid": "u-1"}


def _add_pod(kube: FakeKube, op: KubeOperator, status: dict[str, Any]) -> None:
    key = (NS, "db-0")
    kube.store["pod"][key]["status"] = status
    op.pods.apply({"type": "MODIFIED", "raw_object": kube.store["pod"][key]})


def test_reaction_to_pod_phases() -> None:
    kube = FakeKube()
    kube.store["cr"][(NS, "db")] = cr(1)
    op = operator(kube)
    asyncio.run(op.pass_once())
    op.pods.relist()  # the watch would deliver the ADDED pod
    # Pending: wait, do not create or delete anything
    _add_pod(kube, op, {"phase": "Pending"})
    before = len(kube.made("create_namespaced_pod"))
    a = asyncio.run(op.pass_once())[(NS, "db")]
    assert a is not None and a.kind is ActionKind.WAIT
    assert len(kube.made("create_namespaced_pod")) == before and not kube.made("delete_namespaced_pod")
    # Failed with its PVC there: restart with its data -> the failed pod is deleted first...
    _add_pod(kube, op, {"phase": "Failed"})
    a = asyncio.run(op.pass_once())[(NS, "db")]
    assert a is not None and a.kind is ActionKind.START_MEMBER and "with its data" in a.reason
    assert kube.made("delete_namespaced_pod") == [("db-0", NS)]
    assert not kube.made("delete_namespaced_persistent_volume_claim")  # data kept
    # ...and, once the deletion is observed, created again (same PVC)
    op.pods.apply({"type": "DELETED", "raw_object": {"metadata": {"name": "db-0", "namespace": NS}}})
    asyncio.run(op.pass_once())
    assert len(kube.made("create_namespaced_pod")) == before + 1
    assert len(kube.made("create_namespaced_persistent_volume_claim")) == 1


def test_watch_410_gone_relists() -> None:
    kube = FakeKube()
    kube.store["cr"][(NS, "db")] = cr(1)
    op = operator(kube)
    assert op.crs.relists == 1
    kube.store["cr"][(NS, "db2")] = {**cr(1), "metadata": {**cr(1)["metadata"], "name": "db2"}}
    kube.watch_script["datastoreclusters"] = [
        {"type": "MODIFIED", "raw_object": {**cr(5), "metadata": {**cr(5)["metadata"],
                                                                  "resourceVersion": "150"}}},
        ApiException(status=410, reason="Gone"),
    ]
    op.crs.watch_once()
    assert op.crs.relists == 2  # the cache was rebuilt from a fresh list...
    assert {k[1] for k in op.crs.cache} == {"db", "db2"}  # ...which has the object we missed
    watches = [kw for m, _, kw in kube.calls if m == "watch"]
    assert watches[-1]["resource_version"] == "100"  # watched from the list's resourceVersion
    # the next watch resumes from the relisted resourceVersion, not the expired one
    kube.watch_script["datastoreclusters"] = []
    op.crs.watch_once()
    assert [kw for m, _, kw in kube.calls if m == "watch"][-1]["resource_version"] == str(kube.rv)


def test_watch_events_update_cache_and_resource_version() -> None:
    kube = FakeKube()
    lw = ListWatch("Pod", kube.core.list_pod_for_all_namespaces, kube.watch,
                   kube.clients().to_dict)
    lw.relist()
    pod = {"metadata": {"name": "p", "namespace": NS, "resourceVersion": "7"}}
    lw.apply({"type": "ADDED", "raw_object": pod})
    assert lw.get(NS, "p") == pod and lw.resource_version == "7"
    lw.apply({"type": "BOOKMARK", "raw_object": {"metadata": {"resourceVersion": "9"}}})
    assert lw.resource_version == "9" and lw.get(NS, "p") == pod
    lw.apply({"type": "DELETED", "raw_object": {**pod, "metadata": {**pod["metadata"],
                                                                   "resourceVersion": "10"}}})
    assert lw.get(NS, "p") is None and lw.resource_version == "10"


def test_no_pass_before_the_caches_are_synced() -> None:
    kube = FakeKube()
    kube.store["cr"][(NS, "db")] = cr(1)
    op = KubeOperator(kube.clients(), Unreachable())
    op.crs.relist()  # pods not listed yet: an empty pod cache must not look like an empty cluster
    assert asyncio.run(op.pass_once()) == {}
    assert not kube.made("create_namespaced_pod")


def test_role_labels_follow_the_member_list_and_pdb_follows_voters() -> None:
    kube = FakeKube()
    kube.store["cr"][(NS, "db")] = cr(3)
    op = operator(kube)
    s = spec(3)
    for i in (0, 1):  # both labelled voter; the member list says db-1 is a learner
        kube.store["pod"][(NS, f"db-{i}")] = member_pod(s, i, "", "new", learner=False)
    op.pods.relist()
    p = KubernetesPlatform(kube.clients(), op.crs, op.pods, NS, "db")
    asyncio.run(p.load_spec())
    members = (Member(1, "db-0", (p.peer_url(0),), ordinal=0),
               Member(2, "db-1", (p.peer_url(1),), is_learner=True, ordinal=1))
    asyncio.run(p.sync(Observed("db", 3, 4, members)))
    assert kube.made("patch_namespaced_pod") == [
        ("db-1", NS, {"metadata": {"labels": {ROLE_LABEL: "learner"}}})]
    (ns, body), = kube.made("create_namespaced_pod_disruption_budget")
    assert ns == NS
    assert body["spec"]["maxUnavailable"] == 1  # one voter
    promoted = (members[0], Member(2, "db-1", (p.peer_url(1),), ordinal=1))
    op.pods.relist()
    asyncio.run(p.sync(Observed("db", 3, 4, promoted)))
    assert kube.made("patch_namespaced_pod")[-1][2] == {"metadata": {"labels": {ROLE_LABEL: "voter"}}}
    (name, _ns, patch), = kube.made("patch_namespaced_pod_disruption_budget")
    assert name == "db"
    assert patch["spec"]["minAvailable"] == 2 and patch["spec"]["maxUnavailable"] is None
    # what the API server then holds: the new field only (both set is refused with 422)
    assert kube.store["pdb"][(NS, "db")]["spec"] == pdb(s, 2)["spec"]
    # and back to one voter: minAvailable goes, maxUnavailable returns
    asyncio.run(p.sync(Observed("db", 3, 4, members[:1])))
    assert kube.store["pdb"][(NS, "db")]["spec"] == pdb(s, 1)["spec"]


def test_the_stand_in_refuses_a_pdb_with_both_fields_as_the_api_server_does() -> None:
    kube = FakeKube()
    body = pdb(spec(3), 3)
    kube.policy.create_namespaced_pod_disruption_budget(NS, body)
    with pytest.raises(ApiError) as e:
        kube.policy.patch_namespaced_pod_disruption_budget("db", NS, {"spec": {"maxUnavailable": 1}})
    assert e.value.status == 422
    st = json.loads(e.value.body)
    assert (st["code"], st["reason"], st["details"]["causes"][0]["field"]) == (422, "Invalid", "spec")
    # ValidatePodDisruptionBudgetSpec's words, after the field path and the internal spec value
    assert st["message"].startswith('PodDisruptionBudget.policy "db" is invalid: spec: Invalid value: '
                                    '{"MinAvailable":2,"Selector":{"matchLabels":{')
    assert st["message"].endswith('"MaxUnavailable":1,"UnhealthyPodEvictionPolicy":null}: '
                                  "minAvailable and maxUnavailable cannot be both set")
    assert kube.store["pdb"][(NS, "db")]["spec"] == body["spec"]  # refused: nothing changed
    with pytest.raises(ApiError, match="cannot be both set"):
        kube.policy.create_namespaced_pod_disruption_budget(
            NS, {**body, "metadata": {"name": "x"}, "spec": {**body["spec"], "maxUnavailable": 1}})


def test_scale_down_cleanup_deletes_pod_and_pvc() -> None:
    kube = FakeKube()
    kube.store["cr"][(NS, "db")] = cr(1)
    op = operator(kube)
    s = spec(1)
    kube.store["pod"][(NS, "db-3")] = member_pod(s, 3, "", "existing", False)
    kube.store["pvc"][(NS, "data-db-3")] = member_pvc(s, 3)
    op.pods.relist()
    p = KubernetesPlatform(kube.clients(), op.crs, op.pods, NS, "db")
    asyncio.run(p.load_spec())
    assert p.ordinal_of("http://db-3.db-headless.prod.svc:2380") == 3
    assert p.ordinal_of("http://other-3.db-headless.prod.svc:2380") is None
    asyncio.run(p.delete_member(3, delete_data=True))
    assert kube.made("delete_namespaced_pod") == [("db-3", NS)]
    assert kube.made("delete_namespaced_persistent_volume_claim") == [("data-db-3", NS)]


def test_degraded_is_a_warning_event_once() -> None:
    kube = FakeKube()
    kube.store["cr"][(NS, "db")] = cr(1)
    pod = member_pod(spec(1), 0, "", "new", False)
    pod["status"] = {"phase": "Failed"}
    kube.store["pod"][(NS, "db-0")] = pod  # no PVC: no member has data left
    op = operator(kube)
    for _ in range(2):
        a = asyncio.run(op.pass_once())[(NS, "db")]
        assert a is not None and a.kind is ActionKind.DEGRADED
    (_ns, ev), = kube.made("create_namespaced_event")
    assert ev["type"] == "Warning" and ev["reason"] == "Degraded" and "snapshot" in ev["message"]
    assert not kube.made("create_namespaced_pod") and not kube.made("delete_namespaced_pod")


# ---- deletion that takes time: finalizers and terminating objects --------------------------

def _user_of(claim: str) -> dict[str, Any]:
    """A scheduled pod (not ours) that mounts the claim: it holds the PVC's protection."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "backup", "namespace": NS},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}],
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}}


def test_the_stand_in_keeps_a_used_pvc_terminating() -> None:
    kube = FakeKube()
    kube.admin.core.create_namespaced_persistent_volume_claim(NS, member_pvc(spec(1), 0))
    kube.admin.core.create_namespaced_pod(NS, _user_of("data-db-0"))
    pvc = kube.store["pvc"][(NS, "data-db-0")]
    assert pvc["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]  # added on create
    kube.admin.core.delete_namespaced_persistent_volume_claim("data-db-0", NS)
    assert pvc["metadata"]["deletionTimestamp"]  # Terminating, still there
    with pytest.raises(ApiError) as e:
        kube.admin.core.create_namespaced_persistent_volume_claim(NS, member_pvc(spec(1), 0))
    assert e.value.status == 409
    assert json.loads(e.value.body)["message"] == 'persistentvolumeclaims "data-db-0" already exists'
    kube.admin.core.delete_namespaced_pod("backup", NS)  # no node's kubelet: gone at once
    assert (NS, "data-db-0") not in kube.store["pvc"]  # the protection controller let it go
    assert [t for _, k, t, o in kube.log if k == "pvc"] == ["ADDED", "MODIFIED", "DELETED"]


def test_a_terminating_pvc_is_waited_for_not_created_again() -> None:
    kube = FakeKube()
    kube.store["cr"][(NS, "db")] = cr(1)
    kube.admin.core.create_namespaced_persistent_volume_claim(NS, member_pvc(spec(1), 0))
    kube.admin.core.create_namespaced_pod(NS, _user_of("data-db-0"))
    kube.admin.core.delete_namespaced_persistent_volume_claim("data-db-0", NS)
    op = operator(kube)
    for _ in range(2):  # the data is going: bootstrap, but the claim's name is still taken
        a = asyncio.run(op.pass_once())[(NS, "db")]
        assert a is not None and a.kind is ActionKind.BOOTSTRAP
    assert not kube.made("create_namespaced_persistent_volume_claim")  # no 409 to escape
    assert not kube.made("create_namespaced_pod")
    (_ns, ev), = kube.made("create_namespaced_event")  # once, not once per pass
    assert ev["type"] == "Normal" and ev["reason"] == "Bootstrap"
    assert "PVC data-db-0 is still being deleted (held by kubernetes.io/pvc-protection)" in ev["message"]
    kube.admin.core.delete_namespaced_pod("backup", NS)
    asyncio.run(op.pass_once())
    assert [b["metadata"]["name"] for _, b in kube.made("create_namespaced_persistent_volume_claim")] == \
        ["data-db-0"]
    assert len(kube.made("create_namespaced_pod")) == 1


def test_a_409_on_create_is_a_wait_not_a_failed_pass() -> None:
    kube = FakeKube()
    kube.store["cr"][(NS, "db")] = cr(1)
    kube.fail("create_namespaced_persistent_volume_claim",
              ApiError(409, message='persistentvolumeclaims "data-db-0" already exists'))
    op = operator(kube)
    a = asyncio.run(op.pass_once())[(NS, "db")]  # not None: the pass did not fail
    assert a is not None and a.kind is ActionKind.BOOTSTRAP
    (_ns, ev), = kube.made("create_namespaced_event")
    assert "PersistentVolumeClaim data-db-0 already exists" in ev["message"]
