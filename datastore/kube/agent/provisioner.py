"""A tiny external provisioner: claims of the StorageClass ``agent-local`` (the cluster's
default) get a hostPath PersistentVolume, a directory under ``DIR/agent/volumes/``.

The claim binds at once (``volumeBindingMode: Immediate``) and its volume has no node
affinity: every agent node is this machine, so any of them can mount it. The real
controllers do the rest: kube-controller-manager's PV controller binds the claim to the
volume and marks the volume Released when the claim is deleted; the provisioner then
deletes the directory and the volume (``reclaimPolicy: Delete``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from datastore.kube.agent.client import ApiError, Client, path_of

log = logging.getLogger("datastore.kube.agent")

STORAGE_CLASS = "agent-local"
PROVISIONER = "datastore.dev/agent-hostpath"
SC_PATH = "storage.k8s.io/v1/storageclasses"


def ensure_storage_class(client: Client) -> None:
    sc = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
          "metadata": {"name": STORAGE_CLASS,
                       "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
          "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}
    try:
        client.post(path_of(SC_PATH), sc)
    except ApiError as e:
        if e.status != 409:
            raise


def sync(client: Client, volumes_dir: Path, claims: list[dict[str, Any]],
         volumes: list[dict[str, Any]]) -> None:
    """Provision what is claimed and not yet provisioned; delete what was released."""
    by_claim = {((v["spec"].get("claimRef") or {}).get("uid")) for v in volumes}
    for c in claims:
        md, spec = c["metadata"], c.get("spec") or {}
        if (spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName")
                or md.get("deletionTimestamp") or md["uid"] in by_claim):
            continue
        name = f"pvc-{md['uid']}"
        directory = volumes_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                           "labels": {"datastore.dev/agent-volume": "true"}},
              "spec": {"capacity": {"storage": spec["resources"]["requests"]["storage"]},
                       "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                       "persistentVolumeReclaimPolicy": "Delete", "storageClassName": STORAGE_CLASS,
                       "volumeMode": spec.get("volumeMode") or "Filesystem",
                       "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                    "namespace": md["namespace"], "name": md["name"], "uid": md["uid"]},
                       "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"}}}
        try:
            client.post(path_of("persistentvolumes"), pv)
            log.info("provisioned", extra={"claim": f"{md['namespace']}/{md['name']}", "volume": name})
        except ApiError as e:
            if e.status != 409:
                raise
    for v in volumes:
        md, spec = v["metadata"], v.get("spec") or {}
        if ((md.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER
                or (v.get("status") or {}).get("phase") not in ("Released", "Failed")
                or spec.get("persistentVolumeReclaimPolicy") != "Delete"
                or md.get("deletionTimestamp")):
            continue
        path = (spec.get("hostPath") or {}).get("path")
        if path and Path(path).parent == volumes_dir:
            shutil.rmtree(path, ignore_errors=True)
        try:
            client.delete(path_of("persistentvolumes", name=md["name"]))
            log.info("deleted released volume", extra={"volume": md["name"]})
        except ApiError as e:
            if e.status != 404:
                raise
