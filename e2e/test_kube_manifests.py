"""Every kustomization of manifests/ applied to a real kube-apiserver (``datastore kube up``).

A server-side dry run first, then the real apply, with kubectl's strict field validation:
the API server's own schema, admission (Pod Security ``restricted`` on the operator's
namespace) and RBAC checks decide. The CRD's schema must refuse bad DatastoreClusters with
its own message, and the printer columns and scale subresource must read a status written
the way the operator writes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kube_util import kjson, kubectl, running, wait_for

from datastore.kube.controlplane import ControlPlane
from tests.manifests.render import MANIFESTS, one, render

OPERATOR_NS = "datastore-system"
SA = f"system:serviceaccount:{OPERATOR_NS}:kvoperator"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running(tmp_path_factory.mktemp("kube-manifests"), nodes=0) as plane:
        yield plane


def apply(cp: ControlPlane, *args: str, dry_run: bool = False) -> str:
    """``kubectl apply`` (strict field validation is kubectl's default); no warnings allowed."""
    extra = ("--dry-run=server",) if dry_run else ()
    proc = kubectl(cp, "apply", *args, *extra)
    assert "Warning" not in proc.stderr, proc.stderr
    return proc.stdout


def test_operator_install_is_accepted(cp: ControlPlane) -> None:
    # A dry run cannot create the namespace its namespaced objects go to, so on a fresh
    # cluster it refuses exactly those, and nothing else.
    fresh = kubectl(cp, "apply", "-k", str(MANIFESTS), "--dry-run=server", check=False)
    errors = [line for line in fresh.stderr.splitlines() if line.strip()]
    assert errors and all(f'namespaces "{OPERATOR_NS}" not found' in e for e in errors), fresh.stderr
    assert kubectl(cp, "get", "crd", "datastoreclusters.datastore.dev", check=False).returncode != 0

    ns = one(render(""), "Namespace", OPERATOR_NS)
    kubectl(cp, "apply", "-f", "-", input=json.dumps(ns))
    out = apply(cp, "-k", str(MANIFESTS), dry_run=True)
    assert "(server dry run)" in out
    rendered = render("")
    assert out.count("(server dry run)") == len(rendered), out

    out = apply(cp, "-k", str(MANIFESTS))
    for obj in rendered:
        assert f"{obj['kind'].lower()}" in out.lower()
    kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/datastoreclusters.datastore.dev")
    crd = kjson(cp, "get", "crd", "datastoreclusters.datastore.dev")
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds == {"NamesAccepted": "True", "Established": "True"}, conds
    assert crd["status"]["acceptedNames"]["shortNames"] == ["dsc"]

    # RBAC as the API server evaluates it for the operator's service account
    def can(verb: str, resource: str, *extra: str) -> bool:
        p = kubectl(cp, "auth", "can-i", "--as", SA, verb, resource, *extra, check=False)
        return p.stdout.strip() == "yes"

    assert can("watch", "datastoreclusters.datastore.dev", "--all-namespaces")
    assert can("patch", "datastoreclusters.datastore.dev", "--subresource=status", "-n", "default")
    assert can("delete", "persistentvolumeclaims", "-n", "default")
    assert can("create", "events", "-n", "default")
    assert not can("get", "secrets", "-n", "default")
    assert not can("delete", "services", "-n", "default")
    assert not can("update", "datastoreclusters.datastore.dev", "-n", "default")
    # the aggregated roles: an `edit` user can scale a cluster, a `view` user cannot
    kubectl(cp, "create", "namespace", "team")
    kubectl(cp, "-n", "team", "create", "rolebinding", "alice-edit", "--clusterrole=edit",
            "--user=alice")
    kubectl(cp, "-n", "team", "create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob")
    wait_for(lambda: kubectl(cp, "auth", "can-i", "--as=alice", "-n", "team", "patch",
                             "datastoreclusters.datastore.dev", "--subresource=scale",
                             check=False).stdout.strip() == "yes", 60, "edit to aggregate")
    assert kubectl(cp, "auth", "can-i", "--as=bob", "-n", "team", "list", "dsc",
                   check=False).stdout.strip() == "yes"
    assert kubectl(cp, "auth", "can-i", "--as=bob", "-n", "team", "patch", "dsc",
                   check=False).stdout.strip() == "no"

    # The operator's pod passes Pod Security "restricted" (enforced on its namespace): the
    # ReplicaSet creates it (no nodes here, so it stays Pending).
    dep = kjson(cp, "-n", OPERATOR_NS, "get", "deployment", "kvoperator")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "kvoperator"
    pods = wait_for(lambda: kjson(cp, "-n", OPERATOR_NS, "get", "pods")["items"], 60,
                    "the operator's pod to be created")
    assert pods[0]["spec"]["serviceAccountName"] == "kvoperator"
    events = kjson(cp, "-n", OPERATOR_NS, "get", "events")["items"]
    assert not [e for e in events if e["reason"] == "FailedCreate"], events


def _cr(name: str, spec: dict) -> str:
    return json.dumps({"apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
                       "metadata": {"name": name}, "spec": spec})


@pytest.mark.parametrize(("spec", "message"), [
    ({"size": 0}, "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"),
    ({"size": 10}, "spec.size in body should be less than or equal to 9"),
    ({"size": 3, "sise": 3}, 'strict decoding error: unknown field "spec.sise"'),
    ({"version": "not a version!"}, 'spec.version: Invalid value: "not a version!": spec.version '
                                    "in body should match"),
    ({"version": "1.2"}, "spec.version in body should match"),
    ({"storage": {"size": "1 GB"}}, "spec.storage.size in body should match"),
    ({"tls": {"serverSecret": "x"}}, 'unknown field "spec.tls.serverSecret"'),
])
def test_invalid_clusters_are_refused(cp: ControlPlane, spec: dict, message: str) -> None:
    kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/datastoreclusters.datastore.dev")
    for extra in (("--dry-run=server",), ()):
        p = kubectl(cp, "apply", "-n", "default", "-f", "-", *extra, input=_cr("bad", spec),
                    check=False)
        assert p.returncode != 0 and message in p.stderr, p.stderr
    assert kubectl(cp, "-n", "default", "get", "dsc", "bad", check=False).returncode != 0


def test_example_cluster_columns_and_scale(cp: ControlPlane) -> None:
    from tests.manifests.test_crd import operator_statuses

    kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/datastoreclusters.datastore.dev")
    examples = str(MANIFESTS / "examples")
    apply(cp, "-n", "default", "-k", examples, dry_run=True)
    apply(cp, "-n", "default", "-k", examples)
    got = kjson(cp, "-n", "default", "get", "dsc", "example")
    want = one(render("examples"), "DatastoreCluster", "example")
    assert got["spec"] == want["spec"]
    # defaults from the schema: a bare cluster gets size 3 and a 1Gi volume
    kubectl(cp, "apply", "-n", "default", "-f", "-", input=_cr("bare", {}))
    assert kjson(cp, "-n", "default", "get", "dsc", "bare")["spec"] == {
        "size": 3, "storage": {"size": "1Gi"}}

    # no status yet: the columns are empty
    row = kubectl(cp, "-n", "default", "get", "dsc", "example", "--no-headers").stdout.split()
    assert row[:2] == ["example", "3"] and len(row) == 3, row  # NAME SIZE AGE

    # a status as the operator's builder writes it, through the status subresource
    status = operator_statuses()["converged"]
    kubectl(cp, "-n", "default", "patch", "dsc", "example", "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": status}))
    table = kubectl(cp, "-n", "default", "get", "dsc", "example").stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "READY", "LEADER", "AVAILABLE", "AGE"]
    name, size, ready, leader, available, _age = table[1].split()
    assert (name, size, ready, leader, available) == (
        "example", "3", str(status["readyMembers"]), status["leaderID"], "True"), table
    stored = kjson(cp, "-n", "default", "get", "dsc", "example")["status"]
    assert stored == status

    # the scale subresource: kubectl scale writes .spec.size; reads .status.size/.selector
    kubectl(cp, "-n", "default", "scale", "dsc/example", "--replicas=5")
    assert kjson(cp, "-n", "default", "get", "dsc", "example")["spec"]["size"] == 5
    scale = json.loads(kubectl(cp, "get", "--raw", "/apis/datastore.dev/v1alpha1/namespaces/"
                                                   "default/datastoreclusters/example/scale").stdout)
    assert scale["spec"]["replicas"] == 5
    assert scale["status"] == {"replicas": status["size"], "selector": status["selector"]}
    refused = kubectl(cp, "-n", "default", "scale", "dsc/example", "--replicas=12", check=False)
    assert refused.returncode != 0 and "less than or equal to 9" in refused.stderr, refused.stderr


@pytest.mark.parametrize("overlay", ["static", "static/tls"])
def test_static_manifests_are_accepted(cp: ControlPlane, overlay: str) -> None:
    ns = "static-" + overlay.replace("/", "-")
    kubectl(cp, "create", "namespace", ns)
    directory = str(MANIFESTS / overlay)
    rendered = render(overlay)
    out = apply(cp, "-n", ns, "-k", directory, dry_run=True)
    assert out.count("(server dry run)") == len(rendered), out
    apply(cp, "-n", ns, "-k", directory)
    for obj in rendered:
        kubectl(cp, "-n", ns, "get", obj["kind"].lower(), obj["metadata"]["name"])
    sts = kjson(cp, "-n", ns, "get", "statefulset", "datastore")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "ghcr.io/datastore/datastore:")
    # the StatefulSet controller makes the pods and their claims from the templates
    wait_for(lambda: len(kjson(cp, "-n", ns, "get", "pods")["items"]) == 3, 60, "3 pods")
    claims = wait_for(lambda: [c["metadata"]["name"] for c in
                               kjson(cp, "-n", ns, "get", "pvc")["items"]], 60, "3 claims")
    assert sorted(claims) == [f"data-datastore-{i}" for i in range(3)]

