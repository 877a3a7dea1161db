"""A real kube-apiserver, controller-manager, scheduler and kwok on 1 and 3 datastore
members (``datastore kube up``), driven with the real kubectl.

Each cluster runs the whole module: kubectl's everyday work, a Deployment rolled out by
the real controllers, the API server's own compaction every minute, leases renewing for
five minutes (two on one member), and on three members a kill -9 of the storage leader under writes. The API
server runs with its cache-consistency checker set to panic, so a cache that drifts from
the storage ends the test run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hashkv_util import hashes_agree
from kube_util import kjson, kubectl, metric_values, running, wait_for

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.kube.controlplane import ControlPlane

# How long the Leases are watched renewing: five minutes on three members; on one member,
# which the other tests already cover end to end, two are enough (CI time).
LEASE_WATCH_SECONDS = {1: 120.0, 3: 300.0}


class LeaseSampler(threading.Thread):
    """Reads the fast-changing Leases (leader election, node heartbeats) every 2 s."""

    def __init__(self, cp: ControlPlane, watch_seconds: float) -> None:
        super().__init__(daemon=True)
        self.cp, self.stop_event = cp, threading.Event()
        self.watch_seconds = watch_seconds
        self.renewals: dict[str, list[str]] = {}  # lease → distinct renewTimes seen
        self.errors: list[str] = []
        self.started = time.monotonic()

    def run(self) -> None:
        api = self.cp.api()
        while not self.stop_event.wait(2.0):
            for path in ("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
                         "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"):
                try:
                    status, body = api.get(path)
                except OSError as e:
                    self.errors.append(f"{path}: {e}")
                    continue
                if status != 200:
                    self.errors.append(f"{path}: HTTP {status}")
                    continue
                for item in body["items"]:
                    name = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
                    seen = self.renewals.setdefault(name, [])
                    renew = item["spec"].get("renewTime")
                    if renew and (not seen or seen[-1] != renew):
                        seen.append(renew)


@pytest.fixture(scope="module", params=[1, 3], ids=["1-member", "3-members"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[ControlPlane, LeaseSampler]]:
    with running(tmp_path_factory.mktemp(f"kube{request.param}"), members=request.param) as cp:
        sampler = LeaseSampler(cp, LEASE_WATCH_SECONDS[request.param])
        sampler.start()
        try:
            yield cp, sampler
        finally:
            sampler.stop_event.set()


def _list(cp: ControlPlane, path: str) -> dict:
    """A list straight from the API (kubectl's -o json rewraps items without the list's
    resourceVersion)."""
    status, body = cp.api().get(path)
    assert status == 200, body
    return body


def _ns(cp: ControlPlane, name: str) -> str:
    if kubectl(cp, "get", "namespace", name, check=False).returncode != 0:
        kubectl(cp, "create", "namespace", name)
    return name


def test_version_reported_and_watch_progress_used(cluster: tuple[ControlPlane, LeaseSampler]
                                                  ) -> None:
    cp, _ = cluster
    log = Path(cp.daemon("kube-apiserver").log).read_text(errors="replace")
    # The API server parses Status's version: below 3.5.13 it logs that it turned
    # RequestWatchProgress (and with it consistent reads from cache) off.
    assert "RequestWatchProgress feature is not supported" not in log
    assert "Failed to parse etcd version" not in log
    ns = _ns(cp, "consistent")
    kubectl(cp, "-n", ns, "create", "configmap", "probe", "--from-literal=a=b")
    # A plain list is a consistent read; served from the watch cache it needs a progress
    # notification from the storage that the cache is up to date.
    for _ in range(3):
        kubectl(cp, "-n", ns, "get", "configmaps")
    reads = metric_values(cp, "apiserver_watch_cache_consistent_read_total")
    served = sum(v for k, v in reads.items() if 'success="true"' in k and 'fallback="false"' in k)
    assert served > 0, reads


def test_configmaps_chunked_list_and_watch(cluster: tuple[ControlPlane, LeaseSampler]) -> None:
    cp, _ = cluster
    ns = _ns(cp, "bulk")
    items = [{"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"cm-{i:04d}", "namespace": ns}, "data": {"i": str(i)}}
             for i in range(1000)]
    kubectl(cp, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                      "items": items}), timeout=300)
    start_rv = _list(cp, f"/api/v1/namespaces/{ns}/configmaps")["metadata"]["resourceVersion"]
    names = kubectl(cp, "-n", ns, "get", "configmaps", "--chunk-size=70", "-o", "name").stdout
    got = sorted(n for n in names.split() if n.startswith("configmap/cm-"))
    assert got == [f"configmap/cm-{i:04d}" for i in range(1000)]

    kubectl(cp, "-n", ns, "patch", "configmap", "cm-0007", "-p", '{"data":{"i":"changed"}}')
    kubectl(cp, "-n", ns, "delete", "configmap", "cm-0008")
    out = kubectl(cp, "get", "--raw", f"/api/v1/namespaces/{ns}/configmaps?watch=1"
                  f"&resourceVersion={start_rv}&timeoutSeconds=3").stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert seen == [("MODIFIED", "cm-0007"), ("DELETED", "cm-0008")], seen


def test_server_side_apply_conflicts(cluster: tuple[ControlPlane, LeaseSampler]) -> None:
    cp, _ = cluster
    ns = _ns(cp, "ssa")
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned", "namespace": ns},
           "data": {"key": "one"}}
    kubectl(cp, "apply", "--server-side", "--field-manager=alice", "-f", "-", input=json.dumps(doc))
    doc["data"]["key"] = "two"
    clash = kubectl(cp, "apply", "--server-side", "--field-manager=bob", "-f", "-",
                    input=json.dumps(doc), check=False)
    assert clash.returncode != 0 and "conflict" in clash.stderr.lower(), clash.stderr
    kubectl(cp, "apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-",
            input=json.dumps(doc))
    got = kjson(cp, "-n", ns, "get", "configmap", "owned", "--show-managed-fields")
    assert got["data"] == {"key": "two"}
    assert {m["manager"] for m in got["metadata"]["managedFields"]} >= {"bob"}


def test_delete_waits_for_finalizer(cluster: tuple[ControlPlane, LeaseSampler]) -> None:
    cp, _ = cluster
    ns = _ns(cp, "finalizers")
    kubectl(cp, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "held", "namespace": ns, "finalizers": ["example.com/hold"]}}))
    kubectl(cp, "-n", ns, "delete", "configmap", "held", "--wait=false")
    held = kjson(cp, "-n", ns, "get", "configmap", "held")
    assert held["metadata"].get("deletionTimestamp"), held["metadata"]
    kubectl(cp, "-n", ns, "patch", "configmap", "held", "--type=json",
            "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
    wait_for(lambda: kubectl(cp, "-n", ns, "get", "configmap", "held", check=False).returncode != 0,
             60, "the configmap to go once its finalizer is removed")
    gone = kubectl(cp, "-n", ns, "get", "configmap", "held", check=False)
    assert "NotFound" in gone.stderr, gone.stderr


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object", "properties": {"spec": {
                     "type": "object", "properties": {"size": {"type": "integer",
                                                               "minimum": 1}}}}}}}]},
}


def test_crd_and_its_objects(cluster: tuple[ControlPlane, LeaseSampler]) -> None:
    cp, _ = cluster
    ns = _ns(cp, "crds")
    kubectl(cp, "apply", "-f", "-", input=json.dumps(CRD))
    kubectl(cp, "wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=120s")
    for i in range(5):
        kubectl(cp, "apply", "-f", "-", input=json.dumps({
            "apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": f"w{i}", "namespace": ns}, "spec": {"size": i + 1}}))
    bad = kubectl(cp, "apply", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "bad", "namespace": ns}, "spec": {"size": 0}}))
    assert bad.returncode != 0 and "spec.size" in bad.stderr, bad.stderr
    widgets = kjson(cp, "-n", ns, "get", "widgets")["items"]
    assert sorted((w["metadata"]["name"], w["spec"]["size"]) for w in widgets) == [
        (f"w{i}", i + 1) for i in range(5)]


def test_deployment_rolls_out_on_kwok_nodes(cluster: tuple[ControlPlane, LeaseSampler]) -> None:
    cp, _ = cluster
    ns = _ns(cp, "apps")
    kubectl(cp, "-n", ns, "create", "deployment", "web", "--image=registry.k8s.io/pause:3.10",
            "--replicas=20")
    kubectl(cp, "-n", ns, "rollout", "status", "deployment/web", "--timeout=240s", timeout=300)

    def pods() -> list[dict]:
        return kjson(cp, "-n", ns, "get", "pods")["items"]

    def summary(items: list[dict]) -> list[tuple[str, str, str, bool]]:
        return [(p["metadata"]["name"], p["spec"].get("nodeName", ""), p["status"].get("phase", ""),
                 bool(p["metadata"].get("deletionTimestamp"))) for p in items]

    # rollout status returns once 20 replicas are available; the pods' phase is kwok's
    # next write, so wait for it rather than read it once.
    running = wait_for(lambda: (lambda items: items if len(items) == 20 and all(
        p["status"].get("phase") == "Running" and p["spec"].get("nodeName", "").startswith(
            "kwok-node-") for p in items) else None)(pods()), 120,
        "20 Running pods on kwok nodes")
    assert len({p["metadata"]["uid"] for p in running}) == 20, summary(running)
    kubectl(cp, "-n", ns, "scale", "deployment/web", "--replicas=0")
    wait_for(lambda: not pods(), 180, "every pod to go after scaling to 0")
    kubectl(cp, "-n", ns, "scale", "deployment/web", "--replicas=20")
    kubectl(cp, "-n", ns, "rollout", "status", "deployment/web", "--timeout=240s", timeout=300)
    again = wait_for(lambda: (lambda items: items if len(items) == 20 else None)(pods()), 120,
                     "20 pods after scaling back")
    assert all(not p["metadata"].get("deletionTimestamp") for p in again), summary(again)


def _compacted_past(cp: ControlPlane, revision: int) -> bool:
    """Whether the storage has compacted away ``revision`` (a Range there is refused)."""
    with grpc.insecure_channel(cp.endpoints[0].removeprefix("http://")) as ch:
        try:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"/", revision=revision),
                                          timeout=10)
        except grpc.RpcError as e:
            if "compacted" in (e.details() or ""):
                return True
            raise
    return False


def _event(ns: str, name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": "ConfigMap", "name": "x", "namespace": ns},
            "reason": "Test", "message": name, "type": "Normal"}


def test_apiserver_compaction_gives_410(cluster: tuple[ControlPlane, LeaseSampler]) -> None:
    cp, _ = cluster
    ns = _ns(cp, "compaction")
    api = cp.api()
    # Events have no watch cache in the API server: their watches reach the storage.
    assert api.post(f"/api/v1/namespaces/{ns}/events", _event(ns, "before"))[0] == 201
    old_rv = int(_list(cp, f"/api/v1/namespaces/{ns}/events")["metadata"]["resourceVersion"])
    for i in range(20):
        assert api.post(f"/api/v1/namespaces/{ns}/events", _event(ns, f"after-{i}"))[0] == 201
    # The API server compacts every minute (--etcd-compaction-interval=1m) through its Txn
    # on compact_rev_key, each time up to the revision it saw one interval earlier.
    wait_for(lambda: _compacted_past(cp, old_rv), 300,
             "the API server to compact past the old revision", interval=5)
    out = kubectl(cp, "get", "--raw", f"/api/v1/namespaces/{ns}/events?watch=1"
                  f"&resourceVersion={old_rv}&timeoutSeconds=5").stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert events and events[0]["type"] == "ERROR", events
    assert events[0]["object"]["code"] == 410, events
    # The client relists, then watches from the list's revision without error.
    listed = _list(cp, f"/api/v1/namespaces/{ns}/events")
    assert len(listed["items"]) == 21
    rv = listed["metadata"]["resourceVersion"]
    out = kubectl(cp, "get", "--raw", f"/api/v1/namespaces/{ns}/events?watch=1"
                  f"&resourceVersion={rv}&timeoutSeconds=2").stdout
    assert "ERROR" not in out, out


def test_storage_leader_killed_under_writes(cluster: tuple[ControlPlane, LeaseSampler]) -> None:
    cp, _ = cluster
    if len(cp.endpoints) < 3:
        pytest.skip("needs 3 members")
    ns = _ns(cp, "failover")
    api = cp.api()
    acked: list[str] = []
    failures: list[tuple[float, int]] = []  # (time, status) of writes that failed
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            name = f"w-{i:05d}"
            t = time.monotonic()
            try:
                status, _ = api.post(f"/api/v1/namespaces/{ns}/configmaps", {
                    "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
            except OSError:
                status = -1
            if status == 201:
                acked.append(name)
            else:
                failures.append((t, status))
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    wait_for(lambda: len(acked) >= 50, 120, "50 acknowledged writes before the kill")
    leader = _storage_leader(cp)
    victim = cp.daemon(leader)
    t_kill = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    n_at_kill = len(acked)
    wait_for(lambda: len(acked) >= n_at_kill + 50, 120, "50 more acknowledged writes after the kill")
    stop.set()
    thread.join(30)
    outage = [t for t, _ in failures if t >= t_kill]
    # No write fails for longer than an election takes (etcd's default 1 s timeout; a
    # loaded 2-core machine gets generous slack).
    if outage:
        assert max(outage) - min(outage) < 15, failures
    names = {i["metadata"]["name"] for i in kjson(cp, "-n", ns, "get", "configmaps")["items"]}
    assert set(acked) <= names, sorted(set(acked) - names)[:10]
    # The member comes back from its data dir and catches up: every member's HashKV agrees.
    cp.restart(leader)
    wait_for(lambda: _hashes_agree(cp), 120, "every member's HashKV to agree")


def _hashes_agree(cp: ControlPlane) -> bool:
    """HashKV at one revision on every member (hashkv_util's rule: an error never agrees)."""
    rev = 0
    answers: dict[str, int | BaseException] = {}
    for url in cp.endpoints:
        with grpc.insecure_channel(url.removeprefix("http://")) as ch:
            try:
                if not rev:
                    rev = rpc_pb2_grpc.KVStub(ch).Range(
                        rpc_pb2.RangeRequest(key=b"/", limit=1), timeout=5).header.revision
                answers[url] = rpc_pb2_grpc.MaintenanceStub(ch).HashKV(
                    rpc_pb2.HashKVRequest(revision=rev), timeout=10).hash
            except grpc.RpcError as e:
                answers[url] = e
    return hashes_agree(answers)


def _storage_leader(cp: ControlPlane) -> str:
    for i, url in enumerate(cp.endpoints):
        with grpc.insecure_channel(url.removeprefix("http://")) as ch:
            st = rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=5)
            if st.leader == st.header.member_id:
                return f"ds{i}"
    raise AssertionError("no storage leader")


def test_leases_renew_and_no_cache_inconsistency(cluster: tuple[ControlPlane, LeaseSampler]
                                                 ) -> None:
    """Last in the module: leases sampled since start-up, for LEASE_WATCH_SECONDS at least."""
    cp, sampler = cluster
    remaining = sampler.watch_seconds - (time.monotonic() - sampler.started)
    if remaining > 0:
        sampler.stop_event.wait(remaining)
    sampler.stop_event.set()
    sampler.join(10)
    # Leader election renews every 2 s (deadline 10 s), kwok's node leases every ~10 s.
    for lease in ("kube-system/kube-controller-manager", "kube-system/kube-scheduler"):
        assert len(sampler.renewals.get(lease, [])) >= 20, (lease, sampler.renewals.get(lease))
    for i in range(3):
        lease = f"kube-node-lease/kwok-node-{i}"
        assert len(sampler.renewals.get(lease, [])) >= 5, (lease, sampler.renewals.get(lease))
    failures = metric_values(cp, "apiserver_storage_consistency_checks_total")
    assert not any(v for k, v in failures.items() if 'status="failure"' in k), failures
    for d in cp.daemons:
        assert d.alive(), f"{d.name} exited:\n{d.log_tail()}"
    log = Path(cp.daemon("kube-apiserver").log).read_text(errors="replace")
    assert "too_many_pings" not in log and "ENHANCE_YOUR_CALM" not in log
