"""The Kubernetes platform end to end, with the pods run as real local processes.

No API server can run here, so the API is ``kvoperator.testing.FakeKube`` (the recording
stand-in) and its pods are run by ``ProcessKubelet``: each pod's own command and args,
with the listen addresses mapped to 127.0.0.1 ports and each PVC a directory. Member URLs
are 127.0.0.1 ports instead of pod DNS names (``PortURLs``). Everything else is the
operator as ``kvoperator run`` runs it: the list-watch caches, the KubernetesPlatform,
the shared planner and reconciler, and the real client talking to real members.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hashkv_util import hashes_agree, wait_hashkv_equal

from datastore.testing.procs import etcdctl, free_port_block
from kvoperator.etcdapi import ClientClusterAPI
from kvoperator.kube import ROLE_LABEL, KubeOperator
from kvoperator.testing import FakeKube, PortURLs, ProcessKubelet

NS = "prod"
KEY = (NS, "db")
WAIT_S = 120.0


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.base = free_port_block(range(5 * 10))
        self.kubelet = ProcessKubelet(tmp / "node", self.base)
        self.kube = FakeKube(self.kubelet)
        self.kube.store["cr"][KEY] = {
            "apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
            "metadata": {"name": "db", "namespace": NS, "uid": "uid-db", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"size": 1}}
        self.op = KubeOperator(self.kube.clients(), ClientClusterAPI(), interval=1.0,
                               urls=PortURLs(self.base))
        self.stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()
        # kvoperator run's loop as it runs: watch threads, wake-ups, passes (its own thread)
        self.thread = threading.Thread(target=asyncio.run, args=(self._run(),), name="operator", daemon=True)
        self.thread.start()
        assert self.started.wait(30)

    async def _run(self) -> None:
        self.stop, self.loop = asyncio.Event(), asyncio.get_running_loop()
        self.started.set()
        await self.op.run(self.stop)

    def close(self) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.kube.close()
        self.thread.join(30)
        self.kubelet.close()

    @property
    def cr(self) -> dict[str, Any]:
        with self.kube.lock:
            return copy.deepcopy(self.kube.store["cr"][KEY])

    def set_size(self, n: int) -> None:
        """As kubectl scale would: a patch, which bumps the generation."""
        with self.kube.lock:
            gen = self.kube.store["cr"][KEY]["metadata"]["generation"] + 1
        self.kube.admin.custom.patch_namespaced_custom_object(
            "datastore.dev", "v1alpha1", NS, "datastoreclusters", "db",
            {"spec": {"size": n}, "metadata": {"generation": gen}})

    def endpoint(self, i: int) -> str:
        return f"127.0.0.1:{self.base + 10 * i}"

    def converged(self, n: int) -> bool:
        cr = self.cr
        st = cr.get("status") or {}
        c = {x["type"]: x["status"] for x in st.get("conditions", [])}
        return (st.get("observedGeneration") == cr["metadata"]["generation"]
                and st.get("size") == n and st.get("readyMembers") == n and len(st["members"]) == n
                and c == {"Available": "True", "Progressing": "False", "Degraded": "False"})

    def drive(self, until: Callable[[], bool], what: str) -> None:
        """The operator runs on its own; play the kubelet (pod status, graceful deletion)
        until ``until``."""
        deadline = time.monotonic() + WAIT_S
        while True:
            assert self.thread.is_alive(), "the operator's loop ended"
            self.kubelet.sync(self.kube)
            if until():
                return
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + json.dumps(
                self.cr.get("status"), indent=1)
            time.sleep(0.2)  # the kubelet's sync period

    def scale(self, n: int) -> None:
        self.set_size(n)
        self.drive(lambda: self.converged(n), f"size {n}")

    def events(self) -> list[dict[str, Any]]:
        return [ev for _, ev in self.kube.made("create_namespaced_event")]

    def ids(self) -> dict[str, str]:
        return {m["name"]: m["id"] for m in self.cr["status"]["members"]}

    def pods(self) -> dict[str, dict[str, Any]]:
        with self.kube.lock:
            return {k[1]: copy.deepcopy(v) for k, v in self.kube.store["pod"].items()}

    def check_hashes(self) -> None:
        """HashKV at one revision is equal on every member (each has applied it)."""
        from datastore.client import Client

        eps = [m["clientURL"].split("://", 1)[1] for m in self.cr["status"]["members"]]

        async def go() -> None:
            async with Client(eps[:1], timeout=10.0) as c:
                rev = (await c.put("probe", "x")).header.revision
                await wait_hashkv_equal(c, eps, rev, WAIT_S)
        asyncio.run(go())

    def check_member_list(self) -> None:
        out = json.loads(etcdctl(self.endpoint(0), "member", "list", "-w", "json").stdout)
        listed = sorted((f"{m['ID']:x}", m["name"], m["peerURLs"][0], m["clientURLs"][0],
                         bool(m.get("isLearner"))) for m in out["members"])
        assert listed == sorted((m["id"], m["name"], m["peerURL"], m["clientURL"], m["isLearner"])
                                for m in self.cr["status"]["members"])


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def pdb_spec(**fields: int) -> dict[str, Any]:
    return {"selector": {"matchLabels": {"app.kubernetes.io/name": "datastore", "datastore.dev/cluster": "db",
                                         ROLE_LABEL: "voter"}}, **fields}


@pytest.mark.timeout(900)
def test_kube_platform_scales_and_heals_real_members(h: Harness) -> None:
    h.drive(lambda: h.converged(1), "the first member")
    assert h.pods()["db-0"]["metadata"]["labels"][ROLE_LABEL] == "voter"
    assert {k[1] for k in h.kube.store["service"]} == {"db", "db-headless"}
    # the whole stored spec: a field left over from an earlier size would be caught
    assert h.kube.store["pdb"][KEY]["spec"] == pdb_spec(maxUnavailable=1)
    etcdctl(h.endpoint(0), "put", "before", "1")
    # a Service whose labels were edited away is not found by label: taken back (409, patch)
    h.kube.admin.core.patch_namespaced_service("db", NS, {"metadata": {"labels": None}})
    h.drive(lambda: h.kube.store["service"][(NS, "db")]["metadata"].get("labels"), "the Service relabelled")
    assert [r[:2] for r in h.kube.refused] == [("create_namespaced_service", 409)]
    h.kube.refused.clear()

    h.scale(3)
    reasons = [ev["reason"] for ev in h.events()]
    assert reasons.count("AddLearner") == 2 and reasons.count("Promote") == 2
    created = [body["metadata"]["labels"][ROLE_LABEL] for _, body in h.kube.made("create_namespaced_pod")]
    assert created == ["voter", "learner", "learner"]  # learners start outside the client Service
    assert {p["metadata"]["labels"][ROLE_LABEL] for p in h.pods().values()} == {"voter"}  # promoted
    assert h.kube.store["pdb"][KEY]["spec"] == pdb_spec(minAvailable=2)
    h.check_member_list()
    h.check_hashes()
    ids = h.ids()

    # kill -9 a container: the kubelet restarts it in place; same member, no new pod
    pods_made = len(h.kube.made("create_namespaced_pod"))
    h.kubelet.kill9(NS, "db-1")
    h.drive(lambda: h.kubelet.restarts.get((NS, "db-1")) == 1 and h.converged(3), "db-1 restarted")
    assert h.ids() == ids and len(h.kube.made("create_namespaced_pod")) == pods_made

    # a pod deleted (eviction, node drain): Terminating until the kubelet stopped it, then
    # recreated on its PVC, same member ID
    h.kube.admin.core.delete_namespaced_pod("db-2", NS)
    h.drive(lambda: "db-2" in h.pods() and not h.pods()["db-2"]["metadata"].get("deletionTimestamp")
            and h.converged(3), "db-2 recreated")
    assert h.ids() == ids
    assert not h.kube.made("delete_namespaced_persistent_volume_claim")

    # the PVC lost too: it stays Terminating (its protection finalizer) until the controller
    # sees the pod gone, here held up; the replacement waits for it, saying why, instead of
    # failing every pass on 409 AlreadyExists
    h.kube.pause_controllers()
    h.kube.admin.core.delete_namespaced_pod("db-2", NS)
    h.kube.admin.core.delete_namespaced_persistent_volume_claim("data-db-2", NS)
    waiting = "PVC data-db-2 is still being deleted (held by kubernetes.io/pvc-protection)"
    h.drive(lambda: any(waiting in ev["message"] for ev in h.events()), "the wait for data-db-2")
    h.kube.pause_controllers(False)
    h.drive(lambda: h.ids().get("db-2") not in (None, ids["db-2"]) and h.converged(3), "db-2 replaced")
    assert h.ids()["db-0"] == ids["db-0"] and h.ids()["db-1"] == ids["db-1"]
    assert h.kube.refused == []  # no create refused with 409 (nor anything else)
    h.check_member_list()
    h.check_hashes()

    h.scale(5)
    assert h.kube.store["pdb"][KEY]["spec"] == pdb_spec(minAvailable=3)
    h.check_member_list()
    h.scale(3)
    assert h.kube.store["pdb"][KEY]["spec"] == pdb_spec(minAvailable=2)
    h.scale(1)
    assert set(h.pods()) == {"db-0"}
    assert {k[1] for k in h.kube.store["pvc"]} == {"data-db-0"}
    assert h.kube.store["pdb"][KEY]["spec"] == pdb_spec(maxUnavailable=1)
    h.check_member_list()
    assert etcdctl(h.endpoint(0), "get", "before", "--print-value-only").stdout.strip() == b"1"

    # the cluster deleted: its objects go with it (owner references), the operator lets go
    assert h.kube.refused == []  # the PDB patches included (a 422 for both fields set)
    h.kube.admin.custom.delete_namespaced_custom_object("datastore.dev", "v1alpha1", NS, "datastoreclusters",
                                                         "db")
    h.drive(lambda: not h.pods() and not h.kube.store["pvc"] and KEY not in h.op.reconcilers, "cleanup")
    # a pass that read the cluster just before the delete may find it gone when it writes
    # the status (as against a real API server); that is the only refusal allowed here
    assert {r[:2] for r in h.kube.refused} <= {("patch_namespaced_custom_object_status", 404)}
    check_rbac(h.kube.permissions_used())


def check_rbac(used: set[tuple[str, str, str]]) -> None:
    """The operator's RBAC (manifests/operator) is exactly what it used in this run."""
    from tests.manifests.render import render
    from tests.manifests.test_operator import SA, granted

    have = granted(render("operator"), SA)
    assert not used - have, f"kvoperator used what its ClusterRole does not grant: {sorted(used - have)}"
    assert not have - used, f"the ClusterRole grants what kvoperator never used: {sorted(have - used)}"


def test_hashkv_errors_are_never_agreement() -> None:
    """The convergence check itself: equal hashes agree; any error, even one repeated text
    from every member ("required revision is a future revision"), does not."""
    behind = RuntimeError("etcdserver: mvcc: required revision is a future revision")
    assert hashes_agree({"a": 7, "b": 7, "c": 7})
    assert not hashes_agree({"a": 7, "b": 8, "c": 7})
    assert not hashes_agree({"a": behind, "b": behind, "c": behind})
    assert not hashes_agree({"a": 7, "b": behind})
    assert not hashes_agree({})
