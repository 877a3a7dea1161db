"""Run the static StatefulSet's own container command as local processes on 127.0.0.1.

The script under test is the one `kubectl kustomize manifests/static[/tls]` renders. Only
what cannot exist here is substituted, each at exactly one place in the script: the
in-cluster DNS names and ports become 127.0.0.1 with per-ordinal ports, the 0.0.0.0
listeners become 127.0.0.1, and mount paths (the data volume, the TLS Secrets) become
directories of the test. Env vars come from the container spec, the downward-API ones as
Kubernetes would fill them. `datastore` on PATH is a shim running this interpreter's
`python -m datastore`, standing in for the image's entry point.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from datastore.testing.procs import ServerProc, free_port_block

from .render import Obj, one, render

NAMESPACE = "default"
PORT_STRIDE = 10  # ordinal k: client base+10k, peer base+10k+1, metrics base+10k+2


@dataclass(frozen=True)
class MemberSpec:
    """The pieces of the rendered StatefulSet the command depends on."""

    sts: Obj
    container: Obj

    @property
    def replicas(self) -> int:
        return int(self.sts["spec"]["replicas"])

    def pod_name(self, ordinal: int) -> str:
        return f"{self.sts['metadata']['name']}-{ordinal}"

    def mount_path(self, volume: str) -> str:
        (path,) = [m["mountPath"] for m in self.container["volumeMounts"] if m["name"] == volume]
        return str(path)

    def probe_paths(self) -> list[str]:
        return [self.container[k]["httpGet"]["path"]
                for k in ("startupProbe", "livenessProbe", "readinessProbe")]


def member_spec(kustomization: str) -> MemberSpec:
    sts = one(render(kustomization), "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return MemberSpec(sts, container)


def port_block(n: int) -> int:
    """A base port such that base + 10*k + {0,1,2} are free for k < n."""
    return free_port_block(PORT_STRIDE * k + j for k in range(n) for j in range(3))


def substitute(script: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        count = script.count(old)
        assert count == 1, (f"the manifest's command has {old!r} {count} times, expected once: "
                            "update the substitutions in tests/manifests/localrun.py to match the manifest")
        script = script.replace(old, new)
    return script


def datastore_shim(directory: Path) -> Path:
    """A `datastore` executable that runs this interpreter's `python -m datastore`."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "datastore"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m datastore "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def member_proc(spec: MemberSpec, ordinal: int, base_port: int, workdir: Path,
                volumes: dict[str, Path] | None = None) -> ServerProc:
    """ServerProc running the manifest's command as pod <sts>-<ordinal> would.

    ``volumes`` maps a volume name of the pod (e.g. a TLS Secret's) to a local directory
    holding what Kubernetes would mount there; args that name files in it are pointed there.
    """
    name = spec.pod_name(ordinal)
    client, peer, metrics = (base_port + PORT_STRIDE * ordinal + j for j in range(3))
    command = spec.container["command"]
    # Other members' URLs: the ordinal comes from the member name the script passes as $1.
    other = f"127.0.0.1:$(({base_port} + {PORT_STRIDE} * ${{1##*-}}"
    data_dir = workdir / name
    replacements = {
        "$1.${domain}:2379": f"{other}))",
        "$1.${domain}:2380": f"{other} + 1))",
        "0.0.0.0:2379": f"127.0.0.1:{client}",
        "0.0.0.0:2380": f"127.0.0.1:{peer}",
        "0.0.0.0:2381": f"127.0.0.1:{metrics}",
        f"--data-dir {spec.mount_path('data')}/": f"--data-dir {data_dir}/",
    }
    script = substitute(command[2], replacements)
    args = list(spec.container.get("args", []))
    for volume, local in (volumes or {}).items():
        mount_path = spec.mount_path(volume)
        assert any(mount_path + "/" in a for a in args), f"no arg uses volume {volume}"
        args = [a.replace(mount_path + "/", f"{local}/") for a in args]
    leftover = [a for a in args if "/etc/" in a or "/var/" in a]
    assert not leftover, f"args name files of volumes the test did not provide: {leftover}"
    env = {"HOSTNAME": name, "PATH": f"{datastore_shim(workdir / 'bin')}{os.pathsep}{os.environ['PATH']}"}
    fields = {"metadata.name": name, "metadata.namespace": NAMESPACE}
    for e in spec.container.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return ServerProc("datastore", name, data_dir, client, peer, [*command[:2], script, *command[3:], *args],
                      workdir / f"{name}.log", env=env)


def metrics_port(proc: ServerProc) -> int:
    return proc.peer_port + 1
