"""The DatastoreCluster CRD: a structural schema, and the example CR validates against it."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

import jsonschema
import pytest

from .render import Obj, crd, crd_schema, one, render, to_json_schema


def operator_statuses() -> dict[str, Obj]:
    """What the operator's status builder really writes, for states that take each branch:
    converged, scaling up with a learner, a member down, quorum lost, no member list yet."""
    from kvoperator.planner import Member, MemberStatus, Observed, Phase, Workload, plan
    from kvoperator.reconcile import now_rfc3339
    from kvoperator.status import build_status

    def cluster(voters: int, size: int, healthy: int, learner: bool = False) -> Observed:
        ords = range(voters + learner)
        members = tuple(Member(0xA0 + i, f"example-{i}", (f"http://example-{i}.example-headless.default.svc:2380",),
                               (f"http://example-{i}.example-headless.default.svc:2379",),
                               is_learner=i == voters, ordinal=i) for i in ords)
        statuses = {i: MemberStatus(0xA0 + i, 0xC1, 0xA0, 100, 100, is_learner=i == voters)
                    for i in ords if i < healthy or i == voters}
        return Observed("example", size, 4, members, 0xC1, statuses,
                        {i: Workload(i, Phase.RUNNING) for i in ords})

    states = {"converged": cluster(3, 3, 3), "scaling-up": cluster(3, 5, 3, learner=True),
              "member-down": cluster(3, 3, 2), "quorum-lost": cluster(3, 3, 1),
              "no-member-list": Observed("example", 3, 1)}
    out = {}
    for name, o in states.items():
        st = build_status(o, plan(o), now_rfc3339())
        out[name] = json.loads(json.dumps(st))  # as it goes over the wire
    return out


FULL_STATUS: Obj = operator_statuses()["converged"]


def _is_rfc3339(value: object) -> bool:
    """The API server's date-time: RFC 3339 with a time zone (jsonschema needs an extra
    package for this format, so check it here)."""
    if not isinstance(value, str):
        return True
    try:
        return "T" in value and datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def validator() -> jsonschema.Draft202012Validator:
    schema = to_json_schema(crd_schema())
    jsonschema.Draft202012Validator.check_schema(schema)
    formats = jsonschema.FormatChecker()
    formats.checks("date-time")(_is_rfc3339)
    return jsonschema.Draft202012Validator(schema, format_checker=formats)


def example() -> Obj:
    return one(render("examples"), "DatastoreCluster", "example")


def structural_errors(node: Obj, path: str = "") -> list[str]:
    """The rules of a structural schema the API server enforces on a CRD (a subset)."""
    errs: list[str] = []
    special = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in node and not special:
        errs.append(f"{path or '/'}: no type")
    if "properties" in node and "additionalProperties" in node:
        errs.append(f"{path}: both properties and additionalProperties")
    for name, sub in node.get("properties", {}).items():
        errs += structural_errors(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        errs += structural_errors(node["additionalProperties"], f"{path}[*]")
    if "items" in node:
        errs += structural_errors(node["items"], f"{path}[]")
    if "default" in node:
        schema = to_json_schema({k: v for k, v in node.items() if k != "default"})
        for e in jsonschema.Draft202012Validator(schema).iter_errors(node["default"]):
            errs.append(f"{path}: default {node['default']!r} is invalid: {e.message}")
    return errs


def schema_at(path: str) -> Obj:
    """The schema node of a simple JSONPath like .spec.storage.size."""
    node = crd_schema()
    for part in path.strip(".").split("."):
        node = node["properties"][part]
    return node


def test_crd_names_and_version() -> None:
    spec = crd()["spec"]
    assert spec["group"] == "datastore.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "DatastoreCluster"
    assert spec["names"]["plural"] == "datastoreclusters"
    assert spec["names"]["shortNames"] == ["dsc"]
    assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [("v1alpha1", True, True)]


def test_schema_is_structural_and_defaults_are_valid() -> None:
    assert structural_errors(crd_schema()) == []


def test_structural_check_can_fail() -> None:
    bad = {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1, "default": 0},
                                             "untyped": {"description": "x"}}}
    assert len(structural_errors(bad)) == 2


def test_field_names_and_types() -> None:
    expect = {
        ".spec.size": "integer", ".spec.version": "string", ".spec.image": "string",
        ".spec.storage.size": "string", ".spec.storage.storageClassName": "string",
        ".spec.resources": "object", ".spec.tls.serverSecretName": "string",
        ".spec.tls.peerSecretName": "string", ".spec.tls.clientSecretName": "string",
        ".status.observedGeneration": "integer", ".status.size": "integer",
        ".status.readyMembers": "integer", ".status.leaderID": "string",
        ".status.selector": "string", ".status.members": "array", ".status.conditions": "array",
    }
    assert {p: schema_at(p)["type"] for p in expect} == expect
    member = schema_at(".status.members")["items"]["properties"]
    assert {k: v["type"] for k, v in member.items()} == {
        "name": "string", "id": "string", "peerURL": "string", "clientURL": "string",
        "isLearner": "boolean", "isLeader": "boolean", "healthy": "boolean"}
    cond = schema_at(".status.conditions")["items"]["properties"]
    assert set(cond) == {"type", "status", "reason", "message", "lastTransitionTime",
                         "observedGeneration"}
    size = schema_at(".spec.size")
    assert (size["minimum"], size["maximum"], size["default"]) == (1, 9, 3)
    assert schema_at(".spec.storage.size")["default"] == "1Gi"
    assert schema_at(".spec.resources")["x-kubernetes-preserve-unknown-fields"] is True


def test_subresources_point_at_schema_fields() -> None:
    (version,) = crd()["spec"]["versions"]
    assert version["subresources"]["status"] == {}
    scale = version["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size",
                     "labelSelectorPath": ".status.selector"}
    assert schema_at(scale["specReplicasPath"])["type"] == "integer"
    assert schema_at(scale["statusReplicasPath"])["type"] == "integer"
    assert schema_at(scale["labelSelectorPath"])["type"] == "string"


def test_printer_columns() -> None:
    (version,) = crd()["spec"]["versions"]
    cols = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert list(cols) == ["Size", "Ready", "Leader", "Available", "Age"]
    for name in ("Size", "Ready", "Leader"):
        col_type, path = cols[name]
        assert schema_at(path)["type"] == col_type, name
    assert cols["Available"][1] == '.status.conditions[?(@.type=="Available")].status'
    assert cols["Age"] == ("date", ".metadata.creationTimestamp")


def test_example_is_three_members_and_valid() -> None:
    cr = example()
    assert cr["apiVersion"] == "datastore.dev/v1alpha1" and cr["spec"]["size"] == 3
    validator().validate(cr)


@pytest.mark.parametrize("state", list(operator_statuses()))
def test_operator_status_is_valid(state: str) -> None:
    st = operator_statuses()[state]
    validator().validate({**example(), "status": st})
    # conditions is a list-map keyed by type: the API server refuses a repeated type
    types = [c["type"] for c in st["conditions"]]
    assert sorted(types) == ["Available", "Degraded", "Progressing"]


def _with(path: str, value: Any) -> Obj:
    cr = {**copy.deepcopy(example()), "status": copy.deepcopy(FULL_STATUS)}
    *parents, last = path.split(".")
    node = cr
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    node[last] = value
    return cr


@pytest.mark.parametrize(("path", "value"), [
    ("spec.size", 0),
    ("spec.size", 10),
    ("spec.size", "3"),
    ("spec.sise", 3),
    ("spec.storage.size", "1 GB"),
    ("spec.version", "not a version!"),
    ("spec.version", "1.2"),
    ("spec.tls.serverSecret", "x"),
    ("spec.resources.requests", {"cpu": [1]}),
    ("status.members.0.isLeader", "yes"),
    ("status.conditions.0.status", "true"),
    ("status.conditions.0.lastTransitionTime", "yesterday"),
    ("status.leaderID", 7),
])
def test_invalid_resources_are_rejected(path: str, value: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(_with(path, value))


def test_resources_accept_quantities_and_unknown_fields() -> None:
    validator().validate(_with("spec.resources", {"requests": {"cpu": 1, "memory": "1Gi"},
                                                   "claims": [{"name": "x"}]}))
