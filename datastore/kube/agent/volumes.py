"""A pod's volumes as directories on this machine (each container sees them at its mount
paths through bind mounts, see enter.py):

- ``emptyDir``: ``<pod dir>/volumes/<name>``, removed with the pod;
- ``persistentVolumeClaim``: the directory of the bound PersistentVolume (``hostPath`` or
  ``local``), which the agent's provisioner made for the claim and keeps as long as it;
- ``secret``, ``configMap``, ``downwardAPI`` and ``projected`` (service-account tokens
  included): files written from the API objects, with their modes;
- ``hostPath``: that path.

Service-account tokens come from the TokenRequest API, bound to the pod, and are written
again at 80% of their lifetime, as the kubelet does.
"""

from __future__ import annotations

import base64
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datastore.kube.agent import downward
from datastore.kube.agent.client import ApiError, Client, path_of


class NotReady(Exception):
    """The pod cannot start yet (a claim unbound, a Secret missing); the message says why."""


@dataclass
class Volumes:
    client: Client
    pod: dict[str, Any]
    pod_dir: Path
    node_allocatable: dict[str, str]
    dirs: dict[str, Path] = field(default_factory=dict)
    read_only: set[str] = field(default_factory=set)
    refresh_at: float = float("inf")  # when a token must be written again

    @property
    def ns(self) -> str:
        return self.pod["metadata"]["namespace"]

    def prepare(self) -> None:
        """Make every volume's directory and files; NotReady if something is missing."""
        self.refresh_at = float("inf")
        for vol in self.pod["spec"].get("volumes") or []:
            self.dirs[vol["name"]] = self._volume(vol)

    def refresh_if_due(self) -> None:
        if time.time() >= self.refresh_at:
            self.prepare()

    def mounts(self, container: dict[str, Any]) -> list[list[Any]]:
        """[source, container path, read only] for each of the container's volumeMounts."""
        out = []
        for m in container.get("volumeMounts") or []:
            src = self.dirs.get(m["name"])
            if src is None:
                raise NotReady(f"volumeMount {m['name']!r} names no volume of the pod")
            if m.get("subPath"):
                src = src / m["subPath"]
                if not src.exists():
                    src.mkdir(parents=True)
            out.append([str(src), m["mountPath"],
                        bool(m.get("readOnly")) or m["name"] in self.read_only])
        return out

    # ---- one volume ---------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        d = self.pod_dir / "volumes" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _volume(self, vol: dict[str, Any]) -> Path:
        name = vol["name"]
        if "emptyDir" in vol:
            return self._dir(name)
        if "persistentVolumeClaim" in vol:
            return self._claim(vol["persistentVolumeClaim"])
        if "hostPath" in vol:
            p = Path(vol["hostPath"]["path"])
            if vol["hostPath"].get("type") == "DirectoryOrCreate":
                p.mkdir(parents=True, exist_ok=True)
            return p
        files: dict[str, tuple[bytes, int]] = {}
        if "secret" in vol:
            self.read_only.add(name)
            self._secret(vol["secret"], files, vol["secret"].get("defaultMode", 0o644))
        elif "configMap" in vol:
            self.read_only.add(name)
            self._config_map(vol["configMap"], files, vol["configMap"].get("defaultMode", 0o644))
        elif "downwardAPI" in vol:
            self.read_only.add(name)
            self._downward(vol["downwardAPI"].get("items") or [], files,
                           vol["downwardAPI"].get("defaultMode", 0o644))
        elif "projected" in vol:
            self.read_only.add(name)
            mode = vol["projected"].get("defaultMode", 0o644)
            for src in vol["projected"].get("sources") or []:
                if "secret" in src:
                    self._secret(src["secret"], files, mode)
                elif "configMap" in src:
                    self._config_map(src["configMap"], files, mode)
                elif "downwardAPI" in src:
                    self._downward(src["downwardAPI"].get("items") or [], files, mode)
                elif "serviceAccountToken" in src:
                    self._token(src["serviceAccountToken"], files, mode)
                else:
                    raise NotReady(f"volume {name!r}: projected source {sorted(src)} is not "
                                   "supported by the agent")
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise NotReady(f"volume {name!r}: type {kinds} is not supported by the agent")
        # Written in place, file by file: a running container has this very directory
        # mounted, so it must stay the same directory.
        d = self._dir(name)
        for rel, (data, mode) in files.items():
            target = d / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            tmp.chmod(mode)
            tmp.replace(target)
        for old in d.rglob("*"):
            if old.is_file() and str(old.relative_to(d)) not in files:
                old.unlink()
        return d

    def _get(self, kind: str, name: str, optional: bool) -> dict[str, Any] | None:
        try:
            return self.client.get(path_of(kind, self.ns, name))
        except ApiError as e:
            if e.status == 404:
                if optional:
                    return None
                raise NotReady(f'{kind[:-1]} "{name}" not found') from e
            raise

    def _claim(self, ref: dict[str, Any]) -> Path:
        claim = self._get("persistentvolumeclaims", ref["claimName"], optional=False)
        assert claim is not None
        pv_name = (claim.get("spec") or {}).get("volumeName")
        if not pv_name or (claim.get("status") or {}).get("phase") != "Bound":
            raise NotReady(f'persistentvolumeclaim "{ref["claimName"]}" is not bound yet')
        pv = self.client.get(path_of("persistentvolumes", name=pv_name))
        spec = pv.get("spec") or {}
        source = (spec.get("hostPath") or spec.get("local") or {}).get("path")
        if not source:
            raise NotReady(f"persistentvolume {pv_name} is neither hostPath nor local")
        p = Path(source)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @staticmethod
    def _items(data: dict[str, bytes], items: list[dict[str, Any]] | None, mode: int,
               files: dict[str, tuple[bytes, int]], what: str) -> None:
        if not items:
            for k, v in data.items():
                files[k] = (v, mode)
            return
        for it in items:
            if it["key"] not in data:
                raise NotReady(f"{what}: no key {it['key']!r}")
            files[it["path"]] = (data[it["key"]], it.get("mode", mode))

    def _secret(self, ref: dict[str, Any], files: dict[str, tuple[bytes, int]], mode: int) -> None:
        name = ref.get("secretName") or ref.get("name")
        obj = self._get("secrets", name, bool(ref.get("optional")))
        data = {k: base64.b64decode(v) for k, v in ((obj or {}).get("data") or {}).items()}
        self._items(data, ref.get("items"), mode, files, f'secret "{name}"')

    def _config_map(self, ref: dict[str, Any], files: dict[str, tuple[bytes, int]], mode: int) -> None:
        obj = self._get("configmaps", ref["name"], bool(ref.get("optional"))) or {}
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        self._items(data, ref.get("items"), mode, files, f'configmap "{ref["name"]}"')

    def _downward(self, items: list[dict[str, Any]], files: dict[str, tuple[bytes, int]],
                  mode: int) -> None:
        for it in items:
            if "fieldRef" in it:
                value = downward.field_value(self.pod, it["fieldRef"]["fieldPath"])
            else:
                value = downward.resource_value(self.pod, it["resourceFieldRef"],
                                                self.pod["spec"]["containers"][0]["name"],
                                                self.node_allocatable)
            files[it["path"]] = (value.encode(), it.get("mode", mode))

    def _token(self, src: dict[str, Any], files: dict[str, tuple[bytes, int]], mode: int) -> None:
        md = self.pod["metadata"]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        seconds = int(src.get("expirationSeconds") or 3600)
        req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": [src["audience"]] if src.get("audience") else [],
                        "expirationSeconds": seconds,
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": md["name"],
                                           "uid": md["uid"]}}}
        try:
            got = self.client.post(path_of("serviceaccounts", self.ns, sa, "token"), req)
        except ApiError as e:
            raise NotReady(f"token for service account {sa}: {e}") from e
        files[src.get("path") or "token"] = (got["status"]["token"].encode(), mode)
        self.refresh_at = min(self.refresh_at, time.time() + 0.8 * seconds)


def remove_pod_dir(pod_dir: Path) -> None:
    """A deleted pod's volumes and files; its logs stay (``<pod dir>/logs``) for whoever
    looks into what happened. Claims' volumes live elsewhere."""
    if not pod_dir.exists():
        return
    for child in pod_dir.iterdir():
        if child.name != "logs":
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
