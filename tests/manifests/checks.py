"""Checks shared by the operator and static manifest tests."""

from __future__ import annotations

from .render import Obj, containers

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod_spec: Obj) -> list[str]:
    """Breaches of the Pod Security Standard "restricted" profile (the parts that apply)."""
    errs: list[str] = []
    pod_sc = pod_spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            errs.append(key)
    for v in pod_spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            errs.append(f"volume {v['name']}: {sorted(kinds)}")
    for c in containers(pod_spec):
        sc = c.get("securityContext", {})
        where = f"container {c['name']}"
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            errs.append(f"{where}: runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            errs.append(f"{where}: runAsUser 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            errs.append(f"{where}: allowPrivilegeEscalation")
        if sc.get("privileged"):
            errs.append(f"{where}: privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            errs.append(f"{where}: capabilities")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            errs.append(f"{where}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            errs.append(f"{where}: hostPort")
    return errs


def hardening_gaps(pod_spec: Obj) -> list[str]:
    """What we ask beyond "restricted": read-only root, requests and a memory limit."""
    gaps: list[str] = []
    for c in containers(pod_spec):
        if c.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
            gaps.append(f"{c['name']}: readOnlyRootFilesystem")
        res = c.get("resources", {})
        if not {"cpu", "memory"} <= set(res.get("requests", {})) or "memory" not in res.get("limits", {}):
            gaps.append(f"{c['name']}: resources")
    return gaps


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a Service selector (a plain map) or a LabelSelector matches these labels."""
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    assert not selector.get("matchExpressions"), "matchExpressions are not used here"
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def named_port(container: Obj, port: int | str) -> int:
    """A probe's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return int(found)
