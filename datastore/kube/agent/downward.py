"""The downward API (``fieldRef``, ``resourceFieldRef``) and ``$(VAR)`` expansion, as the
kubelet resolves them for env values, commands, args and downwardAPI volume files."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
           "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")


class FieldError(ValueError):
    pass


def quantity(text: str | int | float) -> Decimal:
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise FieldError(f"quantities must match the regular expression "
                         f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}")
    num, suffix = Decimal(m.group(1)), m.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return num * Decimal(10) ** int(suffix[1:])
    return num * Decimal(_SUFFIX[suffix])


def field_value(pod: dict[str, Any], path: str) -> str:
    """``fieldRef.fieldPath`` of ``pod`` (the paths the API server accepts)."""
    md, spec, st = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    m = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if m:
        return (md.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": md.get("name"), "metadata.namespace": md.get("namespace"),
        "metadata.uid": md.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": st.get("hostIP"), "status.podIP": st.get("podIP"),
        "status.hostIPs": ",".join(i["ip"] for i in st.get("hostIPs") or []),
        "status.podIPs": ",".join(i["ip"] for i in st.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = md.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise FieldError(f"unsupported fieldPath {path!r}")


def resource_value(pod: dict[str, Any], ref: dict[str, Any], default_container: str,
                   node_allocatable: dict[str, str]) -> str:
    """``resourceFieldRef``: a container's request or limit in units of ``divisor``
    (rounded up); an unset limit is the node's allocatable, as the kubelet does."""
    name = ref.get("containerName") or default_container
    container = next((c for c in pod["spec"]["containers"] if c["name"] == name), None)
    if container is None:
        raise FieldError(f"resourceFieldRef names no container {name!r}")
    kind, _, res = str(ref["resource"]).partition(".")
    if kind not in ("limits", "requests"):
        raise FieldError(f"unsupported resource {ref['resource']!r}")
    value = ((container.get("resources") or {}).get(kind) or {}).get(res)
    if value is None:
        value = node_allocatable.get(res, "0") if kind == "limits" else "0"
    divisor = quantity(ref.get("divisor") or "1")
    return str(math.ceil(quantity(value) / divisor))


def expand(text: str, env: dict[str, str]) -> str:
    """``$(NAME)`` becomes NAME's value when defined (kept as written otherwise); ``$$`` is ``$``."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text[i] == "$" and i + 1 < n:
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if text[i + 1] == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(env[name] if name in env else text[i:end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)
