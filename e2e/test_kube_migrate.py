"""Moving a Kubernetes control plane between etcd 3.6 and the datastore, both ways, with
the usual tools: the real etcdctl 3.6 saves a snapshot of the running storage, and
``datastore kube up --restore-from`` restores it (``datastore snapshot restore`` or
``etcdutl snapshot restore``) under a new control plane.

The same control plane runs on both sides (its certificates are carried over, as a real
move keeps them); only the storage changes. After the move the API server must serve
every object with the same JSON, resourceVersion and uid; a list at a resourceVersion
from before the move must be served; and a watch from a resourceVersion taken before the
move must resume without an error and deliver exactly the later changes.

Watches from before the move go to the storage for ConfigMaps (the API server runs with
their watch cache off, on both sides) and Events (never cached): a cached resource's
watch window starts when its API server starts, so a watch from before *any* restart of
the API server gets 410 and relists, whatever the storage.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kube_util import kubectl, up, wait_for

from datastore.kube import controlplane
from datastore.kube.apiclient import KubeAPI
from datastore.kube.controlplane import ControlPlane
from datastore.kube.pki import Pki
from datastore.testing import refs

NS = "migrate"
APISERVER_ARGS = ("--watch-cache-sizes=configmaps#0",)
MERGE = "application/merge-patch+json"
CMS = f"/api/v1/namespaces/{NS}/configmaps"
EVENTS = f"/api/v1/namespaces/{NS}/events"

# Objects the new control plane's own components rewrite as they start: leader-election
# and node heartbeat Leases (renewTime, holderIdentity) and the Node (kwok's status
# heartbeats) keep their uid and creationTimestamp; nothing else may change.
REWRITTEN_BY_COMPONENTS = {"coordination.k8s.io/v1/leases", "v1/nodes"}
# The API server's identity Lease is its process's: a new API server replaces it (new uid).
IDENTITY_LABEL = "apiserver.kubernetes.io/identity"

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.migrate.example.com"},
    "spec": {"group": "migrate.example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "properties": {
                                   "size": {"type": "integer", "minimum": 1}}},
                               "status": {"type": "object", "properties": {
                                   "phase": {"type": "string"}}}}}}}]}}


def _ok(result: tuple[int, Any], *expected: int) -> Any:
    status, body = result
    assert status in (expected or (200, 201)), f"HTTP {status}: {body}"
    return body


def _get(api: KubeAPI, path: str) -> Any:
    """GET, waiting out 429s: a new API server answers them while a resource's storage
    (a CRD's, say) is still initializing."""
    def answer() -> tuple[int, Any] | None:
        result = api.get(path)
        return None if result[0] == 429 else result
    return _ok(wait_for(answer, 60, f"GET {path} without 429"))


def _configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": "migrate"}},
            "data": data}


def _event(name: str, message: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": NS},
            "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": NS,
                               "name": "edited-before"},
            "reason": "Migration", "message": message, "type": "Normal",
            "source": {"component": "test_kube_migrate"}}


def _populate(cp: ControlPlane) -> dict[str, dict[str, Any]]:
    """A namespace, ConfigMaps, a Secret, a CRD and its objects, a Deployment and its
    pods; returns each created object as the API server answered its creation."""
    api = cp.api()
    created = {"ns": _ok(api.post("/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))}
    for name in ("kept", "edited-before", "edited-after", "deleted-after"):
        created[name] = _ok(api.post(CMS, _configmap(name, state="initial", origin=name)))
    for i in range(20):
        created[f"bulk-{i:02d}"] = _ok(api.post(CMS, _configmap(f"bulk-{i:02d}", i=str(i))))
    binary = _configmap("binary")
    binary["binaryData"] = {"all-bytes": base64.b64encode(bytes(range(256))).decode()}
    created["binary"] = _ok(api.post(CMS, binary))
    created["secret"] = _ok(api.post(f"/api/v1/namespaces/{NS}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "credentials", "namespace": NS},
        "data": {"password": base64.b64encode(b"s3cret\x00\xff").decode()}}))
    _ok(api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD))
    kubectl(cp, "wait", "--for=condition=Established", f"crd/{CRD['metadata']['name']}",
            "--timeout=120s")
    widgets = f"/apis/migrate.example.com/v1/namespaces/{NS}/widgets"
    for i in range(3):
        w = _ok(api.post(widgets, {"apiVersion": "migrate.example.com/v1", "kind": "Widget",
                                   "metadata": {"name": f"w{i}", "namespace": NS},
                                   "spec": {"size": i + 1}}))
        created[f"w{i}"] = _ok(api.request("PATCH", f"{widgets}/w{i}/status",
                                           {"status": {"phase": "Ready"}}, MERGE))
        assert created[f"w{i}"]["metadata"]["uid"] == w["metadata"]["uid"]
    kubectl(cp, "-n", NS, "create", "deployment", "web", "--replicas=3",
            "--image=registry.k8s.io/pause:3.10")
    kubectl(cp, "-n", NS, "rollout", "status", "deployment/web", "--timeout=120s", timeout=150)
    return created


def _listable(api: KubeAPI) -> list[str]:
    """Every resource the API server lists, as '<group/version>/<resource>' paths."""
    versions = ["api/v1"] + [f"apis/{g['preferredVersion']['groupVersion']}"
                             for g in _ok(api.get("/apis"))["groups"]]
    out = []
    for v in versions:
        for r in _ok(api.get(f"/{v}"))["resources"]:
            if "/" not in r["name"] and "list" in r.get("verbs", []):
                out.append(f"{v}/{r['name']}")
    return out


def _everything(cp: ControlPlane) -> tuple[dict[str, dict[str, Any]], int]:
    """Every object of every listable resource, by '<resource path> <ns>/<name>', and the
    smallest list resourceVersion (every object newer than it was written later)."""
    api = cp.api()
    objects, first_rv = {}, None
    for path in _listable(api):
        body = _get(api, f"/{path}")
        if "resourceVersion" not in body["metadata"]:
            continue  # not kept in the storage (componentstatuses)
        rv = int(body["metadata"]["resourceVersion"])
        first_rv = rv if first_rv is None else min(first_rv, rv)
        for item in body["items"]:
            m = item["metadata"]
            objects[f"{path.split('/', 1)[1]} {m.get('namespace', '')}/{m['name']}"] = item
    assert first_rv is not None
    return objects, first_rv


def _sans_type(obj: dict[str, Any]) -> dict[str, Any]:
    """Without kind and apiVersion, which built-in types' list items leave out."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


class Watch:
    """One watch request through the API server, read event by event."""

    def __init__(self, cp: ControlPlane, path: str) -> None:
        pki = Pki(cp.directory / "pki")
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        ctx.load_cert_chain(*pki.client("admin"))
        self.conn = http.client.HTTPSConnection("127.0.0.1", cp.apiserver_port, context=ctx,
                                                timeout=90)
        self.conn.request("GET", path, headers={"Accept": "application/json"})
        self.resp = self.conn.getresponse()  # the API server answers once it watches
        assert self.resp.status == 200, self.resp.read()[:500]

    def until(self, last: str) -> list[tuple[str, str, int]]:
        """(type, name, resourceVersion) of each event up to the one for ``last``."""
        seen = []
        while True:
            line = self.resp.readline()
            assert line, f"the watch ended after {seen}"
            event = json.loads(line)
            assert event["type"] != "ERROR", f"the watch failed: {event['object']} after {seen}"
            m = event["object"]["metadata"]
            seen.append((event["type"], m["name"], int(m["resourceVersion"])))
            if m["name"] == last:
                return seen

    def close(self) -> None:
        self.conn.close()


def _snapshot_save(cp: ControlPlane, dest: Path) -> int:
    """``etcdctl snapshot save`` from the storage member (etcd 3.6's tools, whatever the
    backend); returns the snapshot's revision as ``etcdutl snapshot status`` reads it."""
    subprocess.run([str(refs.binary("etcdctl")), f"--endpoints={cp.endpoints[0]}",
                    "snapshot", "save", str(dest)], check=True, capture_output=True, timeout=120)
    status = subprocess.run([str(refs.binary("etcdutl")), "snapshot", "status", str(dest),
                             "-w", "json"], check=True, capture_output=True, text=True, timeout=60)
    return int(json.loads(status.stdout)["revision"])


@pytest.mark.parametrize(("source", "target"), [("etcd", "datastore"), ("datastore", "etcd")],
                         ids=["etcd-to-datastore", "datastore-to-etcd"])
def test_control_plane_moves_with_its_resource_versions(source: str, target: str,
                                                        tmp_path: Path) -> None:
    # No compaction by the API server during the test: a watch from R needs R's history.
    plane = {"nodes": 1, "compaction_interval": "10m", "extra_apiserver_args": APISERVER_ARGS}
    src = up(tmp_path / "src", backend=source, **plane)
    try:
        created = _populate(src)
        api = src.api()
        # R: a list's resourceVersion just before the snapshot, as a client's informer has it.
        list_at_r = _ok(api.get(CMS))
        r = int(list_at_r["metadata"]["resourceVersion"])
        # Changes after R that travel in the snapshot.
        edited_before = _ok(api.request("PATCH", f"{CMS}/edited-before",
                                        {"data": {"state": "edited before the move"}}, MERGE))
        ev_before = _ok(api.post(EVENTS, _event("ev-before", "before the move")))
        before, before_rv = _everything(src)
        snap = tmp_path / "snapshot.db"
        snap_rev = _snapshot_save(src, snap)
    finally:
        controlplane.down(src.directory)
    assert snap_rev >= before_rv >= _rv(ev_before) > r

    # The new control plane: the same certificates and keys, the storage restored.
    (tmp_path / "dst").mkdir()
    shutil.copytree(src.directory / "pki", tmp_path / "dst" / "pki")
    dst = up(tmp_path / "dst", backend=target, restore_from=snap, **plane)
    try:
        api = dst.api()
        after, _ = _everything(dst)

        # Every object is there with its uid; one not written since is identical, field by
        # field, resourceVersion and managedFields timestamps included.
        missing = sorted(set(before) - set(after))
        assert not missing, f"gone after the move: {missing}"
        rewritten = []
        for key, old in before.items():
            new = after[key]
            if IDENTITY_LABEL in old["metadata"].get("labels", {}):
                assert _rv(new) > snap_rev, key
                continue
            for field in ("uid", "creationTimestamp"):
                assert new["metadata"][field] == old["metadata"][field], (key, field)
            if _rv(new) == _rv(old):
                assert new == old, f"{key} differs at the same resourceVersion"
            else:
                assert _rv(new) > snap_rev, f"{key}: resourceVersion {_rv(old)} → {_rv(new)}"
                rewritten.append(key)
        print(f"rewritten by the new control plane's components: {sorted(rewritten)}")
        assert {k.split(" ")[0] for k in rewritten} <= REWRITTEN_BY_COMPONENTS, rewritten
        # Objects new on this side were written by its components after the move.
        for key in set(after) - set(before):
            assert _rv(after[key]) > snap_rev, f"{key} ({_rv(after[key])}) is not from before"
        # What the creations returned is still what is served (the objects written once).
        for name, obj in created.items():
            if name in ("ns", "edited-before"):
                continue  # the namespace's status and the edit were written after creation
            kind = "secrets" if name == "secret" else (
                "widgets" if name.startswith("w") else "configmaps")
            group = "migrate.example.com/v1" if kind == "widgets" else "v1"
            served = after[f"{group}/{kind} {NS}/{obj['metadata']['name']}"]
            assert _sans_type(served) == _sans_type(obj), f"{name}: served {served}, created {obj}"

        # A list at R (before the move) is served from the restored history.
        again = _ok(api.get(f"{CMS}?resourceVersion={r}&resourceVersionMatch=Exact"))
        assert again["items"] == list_at_r["items"]
        assert again["metadata"]["resourceVersion"] == str(r)

        # Watches from R resume: the change made before the snapshot, then the new ones.
        cm_watch = Watch(dst, f"{CMS}?watch=1&resourceVersion={r}&timeoutSeconds=120")
        ev_watch = Watch(dst, f"{EVENTS}?watch=1&resourceVersion={r}&timeoutSeconds=120")
        try:
            edited = _ok(api.request("PATCH", f"{CMS}/edited-after",
                                     {"data": {"state": "edited after the move"}}, MERGE))
            _ok(api.request("DELETE", f"{CMS}/deleted-after"))  # answers a Status, no revision
            added = _ok(api.post(CMS, _configmap("created-after", state="new")))
            ev_after = _ok(api.post(EVENTS, _event("ev-after", "after the move")))
            assert _rv(edited) > snap_rev
            seen = cm_watch.until("created-after")
            deleted_rv = seen[2][2] if len(seen) == 4 else 0
            assert seen == [
                ("MODIFIED", "edited-before", _rv(edited_before)),
                ("MODIFIED", "edited-after", _rv(edited)),
                ("DELETED", "deleted-after", deleted_rv),
                ("ADDED", "created-after", _rv(added))], seen
            assert _rv(edited) < deleted_rv < _rv(added)
            events = ev_watch.until("ev-after")
            assert ("ADDED", "ev-before", _rv(ev_before)) in events, events
            assert events[-1] == ("ADDED", "ev-after", _rv(ev_after))
            assert all(rv > r for _, _, rv in events), events
        finally:
            cm_watch.close()
            ev_watch.close()

        # The controllers carry on with the moved objects.
        kubectl(dst, "-n", NS, "scale", "deployment/web", "--replicas=4")
        kubectl(dst, "-n", NS, "rollout", "status", "deployment/web", "--timeout=120s",
                timeout=150)
        rs_uid = {p["metadata"]["ownerReferences"][0]["uid"] for k, p in before.items()
                  if k.startswith(f"v1/pods {NS}/")}
        pods = wait_for(lambda: _ok(api.get(f"/api/v1/namespaces/{NS}/pods"))["items"], 30,
                        "the Deployment's pods")
        assert len(pods) == 4
        assert {p["metadata"]["ownerReferences"][0]["uid"] for p in pods} == rs_uid
    finally:
        controlplane.down(dst.directory)
