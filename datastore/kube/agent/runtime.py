"""Containers as local processes: images mapped to local programs, the environment the
kubelet builds, and the process started through enter.py.

Images: ``ghcr.io/datastore/datastore:<any tag>`` is this installation (its ``datastore``,
``kvoperator``, ``kvscheduler`` commands first on PATH; entrypoint ``datastore serve`` and
working directory ``/var/lib/datastore``, as the Containerfile says), and
``registry.k8s.io/pause:<tag>`` sleeps. Any other image is refused with ErrImagePull.

Addresses: in a pod's own network namespace the wildcard address means the pod's address;
here all pods share the host's, so the agent rewrites ``0.0.0.0`` in the command, args and
env values to the pod's address, and for Python programs a startup hook
(``shim/sitecustomize.py``) turns a bind to the wildcard into a bind to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datastore.kube.agent import downward

PROJECT_IMAGE = "ghcr.io/datastore/datastore"
PAUSE_IMAGE = "registry.k8s.io/pause"
ENTER = Path(__file__).with_name("enter.py")
SHIM = Path(__file__).with_name("shim")
BIN = Path(sys.executable).parent  # this installation's commands
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POD_IP_VAR = "KUBE_AGENT_POD_IP"  # read by the bind shim; not DATASTORE_* (read as flags)


class ImageError(Exception):
    pass


@dataclass(frozen=True)
class Image:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    workdir: str
    path: str
    python_shim: bool


def image(ref: str) -> Image:
    repo = ref.split("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    if repo == PROJECT_IMAGE:
        return Image(("datastore", "serve"), (), "/var/lib/datastore", f"{BIN}:{SYSTEM_PATH}", True)
    if repo == PAUSE_IMAGE:
        return Image(("sleep", "infinity"), (), "/", SYSTEM_PATH, False)
    raise ImageError(f'Failed to pull image "{ref}": the agent runs only {PROJECT_IMAGE}:<tag> '
                     f"(this installation) and {PAUSE_IMAGE}:<tag>")


def environment(pod: dict[str, Any], container: dict[str, Any], img: Image, apiserver_port: int,
                lookup: Any, node_allocatable: dict[str, str], home: Path) -> dict[str, str]:
    """The container's variables, in the kubelet's order: the defaults, ``envFrom``, then
    ``env`` (each value expanded against those before it). ``lookup(kind, name, key,
    optional)`` reads a Secret's or ConfigMap's key (None if optional and missing)."""
    spec = pod["spec"]
    ip = (pod.get("status") or {}).get("podIP") or ""
    env: dict[str, str] = {
        "PATH": img.path, "HOME": str(home),
        "HOSTNAME": spec.get("hostname") or pod["metadata"]["name"],
        "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(apiserver_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(apiserver_port),
        "KUBERNETES_PORT": f"tcp://127.0.0.1:{apiserver_port}",
    }
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix") or ""
        for kind in ("configMapRef", "secretRef"):
            if kind in src:
                data = lookup(kind, src[kind]["name"], None, bool(src[kind].get("optional"))) or {}
                env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        value = var.get("value")
        ref = var.get("valueFrom")
        if ref is None:
            env[var["name"]] = downward.expand(value or "", env)
            continue
        if "fieldRef" in ref:
            got = downward.field_value(pod, ref["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in ref:
            got = downward.resource_value(pod, ref["resourceFieldRef"], container["name"],
                                          node_allocatable)
        else:
            kind = "secretKeyRef" if "secretKeyRef" in ref else "configMapKeyRef"
            r = ref[kind]
            got = lookup(kind, r["name"], r["key"], bool(r.get("optional")))
            if got is None:
                continue
        env[var["name"]] = got
    if img.python_shim:
        env[POD_IP_VAR] = ip
        env["PYTHONPATH"] = ":".join(x for x in (str(SHIM), env.get("PYTHONPATH", "")) if x)
    return {k: v.replace("0.0.0.0", ip) if ip else v for k, v in env.items()}


def argv(container: dict[str, Any], img: Image, env: dict[str, str], pod_ip: str) -> list[str]:
    """Entrypoint and args as the runtime combines them; ``$(VAR)`` expanded, the wildcard
    address rewritten."""
    if container.get("command"):
        words = [*container["command"], *(container.get("args") or [])]
    else:
        words = [*img.entrypoint, *(container.get("args") or img.cmd)]
    return [downward.expand(w, env).replace("0.0.0.0", pod_ip) for w in words]


def launch(spec_file: Path, log_file: Path, env: dict[str, str], spec: dict[str, Any]) -> subprocess.Popen:
    """Start enter.py with ``spec`` (argv, cwd, hostname, hosts, mounts); output to ``log_file``."""
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        return subprocess.Popen([sys.executable, "-I", "-S", str(ENTER), str(spec_file)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
