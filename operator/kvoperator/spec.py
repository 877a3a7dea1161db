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


DEFAULT_SIZE = 3  # manifests/crd: spec.size default


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
    size = spec.get("size", DEFAULT_SIZE)  # the CRD's default, which the API server applies
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


# ---- validation against the CRD's schema (kvoperator local has no API server to do it) ----

def crd_schema(crd: Mapping[str, Any], version: str = VERSION) -> dict[str, Any]:
    """The openAPIV3Schema of ``version`` in a CustomResourceDefinition object."""
    for v in (crd.get("spec") or {}).get("versions") or []:
        if v.get("name") == version:
            return dict(v["schema"]["openAPIV3Schema"])
    raise SpecError(f"the CRD has no version {version}")


_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,),
                                       "integer": (int,), "number": (int, float), "boolean": (bool,)}


def schema_errors(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """The subset of OpenAPI v3 that CRDs use: type, enum, minimum/maximum, pattern,
    required, properties, additionalProperties, anyOf, int-or-string. Unknown fields are
    reported (the API server would prune them silently)."""
    import re

    where = path or "."
    if schema.get("x-kubernetes-int-or-string") and isinstance(value, (int, str)) \
            and not isinstance(value, bool):
        return []
    if "anyOf" in schema and all(schema_errors(value, s, path) for s in schema["anyOf"]):
        return [f"{where}: matches none of the allowed forms"]
    t = schema.get("type")
    if t:
        ok = isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
        if not ok:
            return [f"{where}: expected {t}, got {type(value).__name__} {value!r}"]
    errs: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errs.append(f"{where}: {value} is below the minimum {schema['minimum']}")
    if "maximum" in schema and isinstance(value, (int, float)) and value > schema["maximum"]:
        errs.append(f"{where}: {value} is above the maximum {schema['maximum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errs.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        errs += [f"{path}.{k}: required" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if k in props:
                errs += schema_errors(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                errs += schema_errors(v, extra, f"{path}.{k}")
            elif props and not schema.get("x-kubernetes-preserve-unknown-fields") \
                    and t == "object" and path:
                errs.append(f"{path}.{k}: unknown field")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            errs += schema_errors(v, schema["items"], f"{path}[{i}]")
    return errs
