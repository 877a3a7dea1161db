"""Reading a DatastoreCluster, and validating a local manifest against the CRD's schema."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvoperator import spec as specmod

REPO = Path(__file__).resolve().parents[2]
CRD = Path(os.environ.get("KVOP_CRD", REPO / "manifests" / "crd" / "datastoreclusters.yaml"))


def obj(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
            "metadata": {"name": "demo"}, "spec": spec}


def test_parse_fields() -> None:
    s = specmod.parse(obj(size=5, version="1.2", storage={"size": "2Gi", "storageClassName": "ssd"},
                          tls={"serverSecretName": "a", "peerSecretName": "b", "clientSecretName": "c"}))
    assert (s.name, s.namespace, s.size) == ("demo", "default", 5)
    assert (s.storage_size, s.storage_class) == ("2Gi", "ssd")
    assert s.image_ref.endswith(":1.2")
    assert (s.tls.server_secret_name, s.tls.peer_secret_name, s.tls.client_secret_name) == ("a", "b", "c")


@pytest.mark.parametrize("bad", [obj(size=0), obj(size="3"), obj(size=True), {"kind": "Pod"},
                                 {"kind": "DatastoreCluster", "metadata": {}}])
def test_parse_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(specmod.SpecError):
        specmod.parse(bad)


def _schema() -> dict[str, Any]:
    return specmod.crd_schema(yaml.safe_load(CRD.read_text()))


def test_default_size_is_the_crds() -> None:
    """A local manifest without spec.size gets what the API server would default it to."""
    assert _schema()["properties"]["spec"]["properties"]["size"]["default"] == specmod.DEFAULT_SIZE
    assert specmod.parse({"kind": "DatastoreCluster", "metadata": {"name": "x"}}).size == 3


def test_good_manifest_validates_against_the_crd() -> None:
    good = obj(size=3, storage={"size": "1Gi"}, resources={"requests": {"cpu": "100m", "memory": 1024}})
    assert specmod.schema_errors(good, _schema()) == []


@pytest.mark.parametrize(("bad", "words"), [
    (obj(size=0), "minimum"), (obj(size=100), "maximum"), (obj(size="3"), "expected integer"),
    (obj(size=3, storage={"size": "lots"}), "does not match"), (obj(size=3, sise=4), "unknown field"),
])
def test_bad_manifest_rejected_by_the_crd(bad: dict[str, Any], words: str) -> None:
    errs = specmod.schema_errors(bad, _schema())
    assert any(words in e for e in errs), errs
