"""The operator install: RBAC covers what kvoperator does and no more; a sound Deployment."""

from __future__ import annotations

import copy

import pytest

from .checks import hardening_gaps, restricted_violations, selects
from .render import Obj, one, render

NAMESPACE = "datastore-system"
SA = ("kvoperator", NAMESPACE)

# (API group, resource, verb) kvoperator needs: list-watch of its CR and the objects it
# owns, status through the subresource, members' Pods and PVCs created and deleted, the
# Services and PDB created and kept in shape, Events for each action.
NEEDED = {
    *[("datastore.dev", "datastoreclusters", v) for v in ("get", "list", "watch", "patch")],
    *[("datastore.dev", "datastoreclusters/status", v) for v in ("get", "patch")],
    ("datastore.dev", "datastoreclusters/scale", "get"),
    ("datastore.dev", "datastoreclusters/finalizers", "update"),
    *[("", "pods", v) for v in ("get", "list", "watch", "create", "delete", "patch")],
    *[("", "persistentvolumeclaims", v) for v in ("get", "list", "watch", "create", "delete")],
    *[("", "services", v) for v in ("get", "list", "watch", "create", "patch")],
    *[("policy", "poddisruptionbudgets", v) for v in ("get", "list", "watch", "create", "patch")],
    ("", "events", "create"),
}
# Granted beyond NEEDED, each for a reason: update next to patch (replace-style writes),
# scale writes (the CR's own API), CRD reads (kopf's resource discovery), events.k8s.io.
ALSO_GRANTED = {
    ("datastore.dev", "datastoreclusters", "update"),
    ("datastore.dev", "datastoreclusters/status", "update"),
    ("datastore.dev", "datastoreclusters/scale", "patch"),
    ("datastore.dev", "datastoreclusters/scale", "update"),
    ("", "services", "update"),
    ("policy", "poddisruptionbudgets", "update"),
    ("", "events", "patch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
    *[("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")],
}


def granted(objs: list[Obj], subject: tuple[str, str]) -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) the ServiceAccount gets through the bindings here."""
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objs
             if o["kind"] in ("ClusterRole", "Role")}
    out: set[tuple[str, str, str]] = set()
    for b in objs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and (s["name"], s.get("namespace")) == subject
                   for s in b["subjects"]):
            continue
        role = roles[(b["roleRef"]["kind"], b["roleRef"]["name"])]
        for rule in role.get("rules", []):
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    out.update((g, r, v) for v in rule["verbs"])
    return out


def test_rbac_covers_what_the_operator_needs() -> None:
    missing = NEEDED - granted(render("operator"), SA)
    assert not missing, f"kvoperator lacks {sorted(missing)}"


def test_rbac_is_least_privilege() -> None:
    perms = granted(render("operator"), SA)
    assert not [p for p in perms if "*" in p], "no wildcards"
    assert perms - NEEDED - ALSO_GRANTED == set()
    assert not {r for _, r, _ in perms} & {"secrets", "configmaps", "nodes", "serviceaccounts"}


def test_rbac_check_can_fail() -> None:
    objs = copy.deepcopy(render("operator"))
    one(objs, "ClusterRole", "kvoperator")["rules"].pop()
    one(objs, "ClusterRole", "kvoperator")["rules"][0]["verbs"] = ["get"]
    assert NEEDED - granted(objs, SA)
    assert granted(objs, ("kvoperator", "default")) == set()


def test_user_roles_aggregate_into_builtin_roles() -> None:
    objs = render("operator")
    edit = one(objs, "ClusterRole", "datastore-datastoreclusters-edit")
    view = one(objs, "ClusterRole", "datastore-datastoreclusters-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "datastoreclusters/scale" in edit["rules"][0]["resources"]


@pytest.fixture
def deployment() -> Obj:
    return one(render("operator"), "Deployment", "kvoperator")


def test_deployment_runs_the_operator(deployment: Obj) -> None:
    objs = render("operator")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    assert selects(spec["selector"], spec["template"]["metadata"]["labels"])
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"] == SA[0]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/datastore/datastore:0.1.0"
    assert c["command"] == ["kvoperator", "run"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe


def test_deployment_is_hardened(deployment: Obj) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert hardening_gaps(pod) == []


def test_hardening_checks_can_fail(deployment: Obj) -> None:
    pod = copy.deepcopy(deployment["spec"]["template"]["spec"])
    c = pod["containers"][0]
    c["securityContext"] = {"capabilities": {"add": ["NET_ADMIN"]}}
    c["resources"] = {}
    pod["hostNetwork"] = True
    assert len(restricted_violations(pod)) == 3
    assert len(hardening_gaps(pod)) == 2


def test_namespace_enforces_restricted_pod_security() -> None:
    ns = one(render("operator"), "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
