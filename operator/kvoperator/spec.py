"""The ``DatastoreCluster`` object (datastore.dev/v1alpha1), as the operator reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP = "datastore.dev"
VERSION = "v1alpha1"
KIND = "DatastoreCluster"
PLURAL = "datastoreclusters"
DEFAULT_IMAGE = "ghcr.io/datastore/datastore"
DEFAULT_VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class TLSSpec:
    server_secret_name: str = ""
    peer_secret_name: str = ""
    client_secret_name: str = ""


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    size: int = 1
    version: str = DEFAULT_VERSION
    image: str = ""
    storage_size: str = "1Gi"
    storage_class: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    tls: TLSSpec = TLSSpec()

    @property
    def image_ref(self) -> str:
        return self.image or f"{DEFAULT_IMAGE}:{self.version}"


class SpecError(ValueError):
    pass


def parse(obj: Mapping[str, Any]) -> ClusterSpec:
    """Validate a DatastoreCluster object (dict, as from YAML or the API) into a ClusterSpec."""
    if obj.get("kind", KIND) != KIND:
        raise SpecError(f"kind is {obj.get('kind')!r}, expected {KIND}")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise SpecError("metadata.name is required (members are named <name>-<ordinal>)")
    spec = obj.get("spec") or {}
    size = spec.get("size", 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise SpecError(f"spec.size must be an integer >= 1, got {size!r}")
    storage = spec.get("storage") or {}
    tls = spec.get("tls") or {}
    return ClusterSpec(
        name=name, namespace=meta.get("namespace") or "default", uid=meta.get("uid", ""),
        generation=int(meta.get("generation") or 0), size=size,
        version=str(spec.get("version") or DEFAULT_VERSION), image=spec.get("image") or "",
        storage_size=str(storage.get("size") or "1Gi"),
        storage_class=storage.get("storageClassName"),
        resources=spec.get("resources") or {},
        tls=TLSSpec(tls.get("serverSecretName", ""), tls.get("peerSecretName", ""),
                    tls.get("clientSecretName", "")),
    )
