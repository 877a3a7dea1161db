"""The operator install: RBAC covers what kvoperator does and no more; a sound Deployment."""

from __future__ import annotations

import copy

import pytest

from .checks import hardening_gaps, restricted_violations, selects
from .render import Obj, one, render

NAMESPACE = "datastore-system"
SA = ("kvoperator", NAMESPACE)

# What kvoperator needs is not listed here by hand: e2e/test_operator_kube.py records every
# API call the operator makes through a full run and checks the ClusterRole against them,
# both ways (check_rbac there). These tests check the role's shape.


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


def test_rbac_is_least_privilege() -> None:
    perms = granted(render("operator"), SA)
    assert perms, "the ServiceAccount is bound to the kvoperator ClusterRole"
    assert not [p for p in perms if "*" in p], "no wildcards"
    assert not {r for _, r, _ in perms} & {"secrets", "configmaps", "nodes", "serviceaccounts"}
    deletable = {r for _, r, v in perms if v in ("delete", "deletecollection")}
    assert deletable == {"pods", "persistentvolumeclaims"}


def test_rbac_check_can_fail() -> None:
    objs = copy.deepcopy(render("operator"))
    before = granted(objs, SA)
    one(objs, "ClusterRole", "kvoperator")["rules"].pop()
    assert granted(objs, SA) < before
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
