"""kvoperator as deployed by manifests/operator, on the real control plane: its Deployment's
pod runs on an agent node (``datastore kube agent``) with its service account's token, so
every call it makes is authenticated and authorized by the real API server against its
ClusterRole. It scales a DatastoreCluster through ``kubectl scale`` (the scale
subresource) while a writer records every acknowledged put, replaces a member whose pod
and claim were deleted, resumes after its own pod is killed mid-scale, and the cluster's
deletion takes everything it made with it (owner references, garbage collection).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hashkv_util import wait_hashkv_equal
from kube_util import kjson, kubectl, pods, running, wait_for

from datastore.kube.controlplane import ControlPlane
from datastore.testing.procs import etcdctl
from tests.manifests.render import MANIFESTS

NS = "apps"
NAME = "kv"
OPERATOR_NS = "datastore-system"
SELECTOR = f"datastore.dev/cluster={NAME}"
WAIT_S = 180.0


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running(tmp_path_factory.mktemp("kube-operator"), nodes=0, agent_nodes=2) as plane:
        yield plane


class Writer(threading.Thread):
    """Puts w/<n> through the members' pod addresses; remembers what was acknowledged."""

    def __init__(self) -> None:
        super().__init__(name="writer", daemon=True)
        self.endpoints: list[str] = []
        self.acked: dict[str, str] = {}
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        from datastore.client import Client

        n = 0
        while not self.stop.is_set():
            eps = list(self.endpoints)
            if not eps:
                await asyncio.sleep(0.2)  # poll interval until there are members
                continue
            try:
                async with Client(eps, timeout=5.0) as c:
                    for _ in range(20):
                        key, value = f"w/{n:06d}", f"v{n}"
                        n += 1
                        await c.put(key, value)
                        self.acked[key] = value
                        await asyncio.sleep(0.02)  # a steady trickle, not a benchmark
            except Exception:  # a failed put is simply not acknowledged
                self.errors += 1
                await asyncio.sleep(0.2)


class Flow:
    def __init__(self, cp: ControlPlane, writer: Writer) -> None:
        self.cp, self.writer = cp, writer
        self.seen_events: Counter[str] = Counter()

    def cr(self) -> dict[str, Any]:
        return kjson(self.cp, "-n", NS, "get", "dsc", NAME)

    def member_pods(self) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in pods(self.cp, NS, SELECTOR)
                if not p["metadata"].get("deletionTimestamp")}

    def converged(self, n: int) -> dict[str, Any] | None:
        cr = self.cr()
        st = cr.get("status") or {}
        conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
        ok = (st.get("observedGeneration") == cr["metadata"]["generation"] and st.get("size") == n
              and st.get("readyMembers") == n and len(st.get("members") or []) == n
              and all(m.get("healthy") and not m.get("isLearner") for m in st["members"])
              and conds == {"Available": "True", "Progressing": "False", "Degraded": "False"}
              and len(self.member_pods()) == n)
        return cr if ok else None

    def scale(self, n: int) -> dict[str, Any]:
        kubectl(self.cp, "-n", NS, "scale", f"dsc/{NAME}", f"--replicas={n}")
        return self.wait_converged(n)

    def wait_converged(self, n: int) -> dict[str, Any]:
        cr = wait_for(lambda: self.converged(n), WAIT_S, f"{NAME} converged at {n} members")
        self.writer.endpoints = self.endpoints()
        self.check(cr, n)
        return cr

    def endpoints(self) -> list[str]:
        return [f"{p['status']['podIP']}:2379" for p in self.member_pods().values()]

    def new_events(self) -> Counter[str]:
        """Reasons of the cluster's Events since the last call (the operator's actions)."""
        items = kjson(self.cp, "-n", NS, "get", "events", "--field-selector",
                      f"involvedObject.kind=DatastoreCluster,involvedObject.name={NAME}")["items"]
        total = Counter(e["reason"] for e in items for _ in range(int(e.get("count") or 1)))
        fresh = total - self.seen_events
        self.seen_events = total
        return fresh

    def check(self, cr: dict[str, Any], n: int) -> None:
        st = cr["status"]
        # the printer columns, as kubectl shows them
        row = kubectl(self.cp, "-n", NS, "get", "dsc", NAME, "--no-headers").stdout.split()
        assert row[:5] == [NAME, str(n), str(n), st["leaderID"], "True"], row
        # the scale subresource reads what the operator wrote
        scale = json.loads(kubectl(self.cp, "get", "--raw", f"/apis/datastore.dev/v1alpha1/namespaces/{NS}"
                                                           f"/datastoreclusters/{NAME}/scale").stdout)
        assert scale["status"] == {"replicas": n, "selector": st["selector"]}
        # the status says what the members say
        eps = self.endpoints()
        out = json.loads(etcdctl(eps[0], "member", "list", "-w", "json").stdout)
        listed = sorted((f"{m['ID']:x}", m["name"], m["peerURLs"][0], m["clientURLs"][0])
                        for m in out["members"])
        assert listed == sorted((m["id"], m["name"], m["peerURL"], m["clientURL"]) for m in st["members"])
        assert [m["isLeader"] for m in st["members"]].count(True) == 1
        # every acknowledged write is there, and every member holds the same data
        acked = dict(self.writer.acked)
        assert acked, "the writer got nothing acknowledged"
        got = etcdctl(eps[0], "get", "w/", "--prefix", "-w", "json", timeout=60).stdout
        kvs = {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
               for kv in json.loads(got).get("kvs") or []}
        missing = {k: v for k, v in acked.items() if kvs.get(k) != v}
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}"

        async def hashes() -> None:
            from datastore.client import Client

            async with Client(eps[:1], timeout=10.0) as c:
                rev = (await c.put("probe", str(time.time()))).header.revision
                await wait_hashkv_equal(c, eps, rev, 60)
        asyncio.run(hashes())


def operator_pod(cp: ControlPlane) -> dict[str, Any]:
    ps = [p for p in pods(cp, OPERATOR_NS, "app.kubernetes.io/name=kvoperator")
          if not p["metadata"].get("deletionTimestamp")]
    assert len(ps) == 1, [p["metadata"]["name"] for p in ps]
    return ps[0]


def operator_log(cp: ControlPlane) -> str:
    return "".join(f.read_text(errors="replace") for f in
                   (cp.directory / "agent" / "pods").glob(f"{OPERATOR_NS}_kvoperator-*/logs/*.log"))


def owned_objects(cp: ControlPlane) -> dict[str, list[str]]:
    out = {}
    for kind in ("pods", "pvc", "services", "pdb"):
        out[kind] = [o["metadata"]["name"] for o in kjson(cp, "-n", NS, "get", kind, "-l", SELECTOR)["items"]]
    return out


@pytest.mark.timeout(900)
def test_operator_scales_heals_and_cleans_up(cp: ControlPlane) -> None:
    kubectl(cp, "apply", "-k", str(MANIFESTS))
    kubectl(cp, "-n", OPERATOR_NS, "rollout", "status", "deploy/kvoperator", "--timeout=180s")
    op = operator_pod(cp)
    assert op["spec"]["nodeName"].startswith("agent-")
    # its identity is the service account's: the token the agent fetched and mounted
    # (TokenRequest, bound to the pod) is what the API server sees
    token_dir = (cp.directory / "agent" / "pods" / f"{OPERATOR_NS}_{op['metadata']['name']}_"
                 f"{op['metadata']['uid']}" / "volumes")
    (token,) = [p for p in token_dir.glob("kube-api-access-*/token")]
    review = json.loads(kubectl(cp, "create", "-o", "json", "-f", "-", input=json.dumps({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token.read_text()}})).stdout)["status"]
    assert review["authenticated"] is True
    assert review["user"]["username"] == f"system:serviceaccount:{OPERATOR_NS}:kvoperator"
    assert review["user"]["extra"]["authentication.kubernetes.io/pod-name"] == [op["metadata"]["name"]]

    kubectl(cp, "create", "namespace", NS)
    kubectl(cp, "apply", "-n", NS, "-f", "-", input=json.dumps({
        "apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
        "metadata": {"name": NAME}, "spec": {"size": 1}}))
    writer = Writer()
    flow = Flow(cp, writer)
    writer.start()
    try:
        flow.wait_converged(1)
        assert flow.new_events()["Bootstrap"] == 1

        flow.scale(3)
        ev = flow.new_events()
        assert ev["AddLearner"] == 2 and ev["Promote"] == 2, ev
        ids = {m["name"]: m["id"] for m in flow.cr()["status"]["members"]}

        # a member's pod and claim lost: replaced under a new ID, the others keep theirs
        kubectl(cp, "-n", NS, "delete", "pod", f"{NAME}-2", "--wait=false")
        kubectl(cp, "-n", NS, "delete", "pvc", f"data-{NAME}-2", "--wait=false")
        def replaced() -> dict[str, Any] | None:
            c = flow.converged(3)
            new = {m["name"]: m["id"] for m in c["status"]["members"]} if c else {}
            return c if new.get(f"{NAME}-2") not in (None, ids[f"{NAME}-2"]) else None

        cr = wait_for(replaced, WAIT_S, f"{NAME}-2 replaced")
        flow.wait_converged(3)
        now = {m["name"]: m["id"] for m in cr["status"]["members"]}
        assert now[f"{NAME}-0"] == ids[f"{NAME}-0"] and now[f"{NAME}-1"] == ids[f"{NAME}-1"]
        ev = flow.new_events()
        assert ev["RemoveMember"] >= 1 and ev["AddLearner"] >= 1 and ev["Promote"] >= 1, ev

        # the operator's pod killed in the middle of 3 -> 5: its Deployment brings it back
        # and the new one carries on from what the members and objects say
        kubectl(cp, "-n", NS, "scale", f"dsc/{NAME}", "--replicas=5")
        wait_for(lambda: f"{NAME}-3" in flow.member_pods(), WAIT_S, "the scale-up under way")
        old = operator_pod(cp)["metadata"]["name"]
        kubectl(cp, "-n", OPERATOR_NS, "delete", "pod", old, "--grace-period=1", "--wait=false")
        wait_for(lambda: operator_pod(cp)["metadata"]["name"] != old, WAIT_S, "a new operator pod")
        flow.wait_converged(5)
        ev = flow.new_events()
        assert ev["AddLearner"] >= 2 and ev["Promote"] >= 2, ev  # by either operator

        flow.scale(3)
        ev = flow.new_events()
        assert ev["RemoveMember"] == 2, ev
        flow.scale(1)
        ev = flow.new_events()
        assert ev["RemoveMember"] == 2, ev
        assert owned_objects(cp) == {"pods": [f"{NAME}-0"], "pvc": [f"data-{NAME}-0"],
                                     "services": [NAME, f"{NAME}-headless"], "pdb": [NAME]}
    finally:
        writer.stop.set()
        writer.join(30)
    assert len(writer.acked) > 100, len(writer.acked)

    # nothing it asked for was refused: its ClusterRole grants every call it made
    assert " 403" not in operator_log(cp) and "Forbidden" not in operator_log(cp)

    # the cluster deleted: garbage collection follows the owner references
    kubectl(cp, "-n", NS, "delete", "dsc", NAME, "--wait=true")
    wait_for(lambda: owned_objects(cp) == {"pods": [], "pvc": [], "services": [], "pdb": []},
             WAIT_S, "the cluster's objects collected")
    wait_for(lambda: not kjson(cp, "get", "pv")["items"], WAIT_S, "the released volumes deleted")
    assert not list((cp.directory / "agent" / "volumes").iterdir())


@pytest.mark.timeout(900)
def test_operator_logs_in_with_the_credentials_secret(cp: ControlPlane) -> None:
    """Members with auth on: without a user the operator changes nothing and its status
    says what to give; with the optional Secret its Deployment reads (kvoperator-credentials)
    the new pod logs in and scales the cluster."""
    name = "secure"
    kubectl(cp, "apply", "-k", str(MANIFESTS))  # as the first test left it, or fresh
    kubectl(cp, "-n", OPERATOR_NS, "rollout", "status", "deploy/kvoperator", "--timeout=180s")
    kubectl(cp, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
    kubectl(cp, "apply", "-n", NS, "-f", "-", input=json.dumps({
        "apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
        "metadata": {"name": name}, "spec": {"size": 1}}))

    def status() -> dict[str, Any]:
        return kjson(cp, "-n", NS, "get", "dsc", name).get("status") or {}

    def converged(n: int) -> bool:
        st = status()
        conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
        return (st.get("readyMembers") == n and len(st.get("members") or []) == n
                and not any(m.get("isLearner") for m in st["members"])
                and conds == {"Available": "True", "Progressing": "False", "Degraded": "False"})

    def progressing() -> str:
        return next((c.get("message", "") for c in status().get("conditions") or []
                     if c["type"] == "Progressing"), "")

    try:
        wait_for(lambda: converged(1), WAIT_S, f"{name} converged at 1 member")
        (pod,) = [p for p in pods(cp, NS, f"datastore.dev/cluster={name}")]
        ep = f"{pod['status']['podIP']}:2379"
        etcdctl(ep, "user", "add", "root:rootpw")
        etcdctl(ep, "auth", "enable")
        wait_for(lambda: "give the operator a user" in progressing(), WAIT_S,
                 "the status to say the operator needs a user")
        kubectl(cp, "-n", OPERATOR_NS, "create", "secret", "generic", "kvoperator-credentials",
                "--from-literal=user=root", "--from-literal=password=rootpw")
        old = operator_pod(cp)["metadata"]["name"]
        kubectl(cp, "-n", OPERATOR_NS, "delete", "pod", old, "--grace-period=1", "--wait=false")
        wait_for(lambda: operator_pod(cp)["metadata"]["name"] != old, WAIT_S, "a new operator pod")
        kubectl(cp, "-n", NS, "scale", f"dsc/{name}", "--replicas=3")
        wait_for(lambda: converged(3), WAIT_S, f"{name} converged at 3 members, as root")
        out = json.loads(etcdctl(ep, "--user", "root:rootpw", "member", "list", "-w", "json").stdout)
        assert len(out["members"]) == 3 and not any(m.get("isLearner") for m in out["members"]), out
    finally:
        kubectl(cp, "-n", NS, "delete", "dsc", name, "--wait=false", check=False)
        kubectl(cp, "-n", OPERATOR_NS, "delete", "secret", "kvoperator-credentials", check=False)
