"""Every kustomization renders, and every object passes strict Kubernetes schema validation."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest

from .render import MANIFESTS, Obj, kustomizations, render

# The newest release kubernetes-validate ships, and the oldest we still claim to support.
K8S_VERSIONS = [kubernetes_validate.latest_version(), "1.30.0"]
CUSTOM_GROUPS = ("datastore.dev/",)  # validated against our CRD in test_crd.py


def validate_strict(obj: Obj, version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(MANIFESTS.parent)) for p in paths]


def test_every_manifest_directory_is_a_kustomization() -> None:
    expected = {"manifests", "manifests/crd", "manifests/operator", "manifests/examples",
                "manifests/static", "manifests/static/base", "manifests/static/tls"}
    assert set(_ids(kustomizations())) == expected


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", kustomizations(), ids=_ids(kustomizations()))
def test_rendered_objects_pass_strict_validation(directory: Path, version: str) -> None:
    objs = render(directory)
    assert objs, f"{directory} renders nothing"
    for obj in objs:
        if obj["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        validate_strict(obj, version)


def test_strict_validation_rejects_a_misspelled_field() -> None:
    (sts,) = [o for o in render("static") if o["kind"] == "StatefulSet"]
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        validate_strict(sts, K8S_VERSIONS[0])


def test_top_level_installs_crd_and_operator_only() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render(""))
    assert kinds == [
        ("ClusterRole", "datastore-datastoreclusters-edit"),
        ("ClusterRole", "datastore-datastoreclusters-view"),
        ("ClusterRole", "kvoperator"),
        ("ClusterRoleBinding", "kvoperator"),
        ("CustomResourceDefinition", "datastoreclusters.datastore.dev"),
        ("Deployment", "kvoperator"),
        ("Namespace", "datastore-system"),
        ("ServiceAccount", "kvoperator"),
    ]
    for o in render(""):
        if o["kind"] in ("Deployment", "ServiceAccount"):
            assert o["metadata"]["namespace"] == "datastore-system"


def test_every_image_is_the_project_image() -> None:
    for directory in kustomizations():
        for obj in render(directory):
            spec = obj.get("spec", {}).get("template", {}).get("spec")
            for c in (spec or {}).get("containers", []):
                assert c["image"] == "ghcr.io/datastore/datastore:0.1.0", (directory, c["name"])


def test_pods_run_as_the_image_user() -> None:
    """runAsUser/runAsGroup name the Containerfile's USER (fsGroup too, for the volumes)."""
    text = (MANIFESTS.parent / "Containerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", text, re.M)
    assert 'ENTRYPOINT ["datastore", "serve"]' in text
    for directory in ("operator", "static", "static/tls"):
        for obj in render(directory):
            if obj["kind"] in ("Deployment", "StatefulSet"):
                sc = obj["spec"]["template"]["spec"]["securityContext"]
                assert (str(sc["runAsUser"]), str(sc["runAsGroup"])) == user, directory
                assert str(sc.get("fsGroup", user[1])) == user[1], directory
