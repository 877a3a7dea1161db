"""kvctl: a tiny kubectl for Pods and Nodes stored directly in the datastore.

    kvctl --endpoints 127.0.0.1:2379 create -f pods.yaml
    kvctl get pods [-n NS | -A] [-w]
    kvctl get nodes [-w]
    kvctl delete pod NAME [-n NS] | kvctl delete node NAME

Objects are written the way kube-apiserver stores them (its JSON at its registry keys), with
the fields the API server fills in on create (uid, creationTimestamp, namespace). ``-w``
prints the table and then one row per change, as ``kubectl get -w`` does.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml
from kubernetes import client as k8s

from datastore.client import SyncClient
from datastore.client.credentials import credentials
from datastore.client.errors import ClientError
from datastore.client.txn import Compare, op_put
from datastore.errors import wants_credentials
from kvscheduler import objects as obj

DEFAULT_ENDPOINTS = "127.0.0.1:2379"
USER_ENV, PASSWORD_ENV = "KVCTL_USER", "KVCTL_PASSWORD"  # --user's default, and its password


def load_manifests(text: str) -> list[k8s.V1Pod | k8s.V1Node]:
    """Pods and Nodes from (multi-document) YAML; ``kind: List`` items are flattened."""
    out: list[k8s.V1Pod | k8s.V1Node] = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        items = doc.get("items", []) if doc.get("kind", "").endswith("List") else [doc]
        for d in items:
            out.append(obj.from_dict(d))
    return out


def prepare_for_create(o: k8s.V1Pod | k8s.V1Node, now: datetime | None = None) -> k8s.V1Pod | k8s.V1Node:
    """Fill in what the API server sets on create."""
    md = o.metadata
    if md is None or not md.name:
        raise ValueError("every object needs metadata.name")
    md.uid = md.uid or str(uuid.uuid4())
    md.creation_timestamp = md.creation_timestamp or (now or datetime.now(UTC)).replace(microsecond=0)
    if isinstance(o, k8s.V1Pod):
        md.namespace = md.namespace or obj.DEFAULT_NAMESPACE
        o.spec.scheduler_name = o.spec.scheduler_name or obj.DEFAULT_SCHEDULER
        o.status = o.status or k8s.V1PodStatus()
        o.status.phase = o.status.phase or "Pending"
    return o


def create(c: SyncClient, objects: Iterable[k8s.V1Pod | k8s.V1Node], out: TextIO = sys.stdout) -> int:
    """Create each object unless its key exists (like kubectl create); returns failures."""
    failed = 0
    for o in objects:
        prepare_for_create(o)
        key = obj.key_of(o)
        kind = "node" if isinstance(o, k8s.V1Node) else "pod"
        r = c.txn(compare=[Compare.create_revision(key) == 0], success=[op_put(key, obj.encode(o))])
        if r.succeeded:
            print(f"{kind}/{o.metadata.name} created", file=out)
        else:
            failed += 1
            print(f'Error from server (AlreadyExists): {kind}s "{o.metadata.name}" already exists', file=out)
    return failed


# -- tables --------------------------------------------------------------------------------------

def age(ts: datetime | None, now: datetime | None = None) -> str:
    """kubectl's short age: 45s, 3m, 2h, 5d."""
    if ts is None:
        return "<unknown>"
    s = max(0, int(((now or datetime.now(UTC)) - ts).total_seconds()))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def pod_status(pod: k8s.V1Pod) -> str:
    cond = obj.pod_condition(pod, "PodScheduled")
    if pod.metadata.deletion_timestamp:
        return "Terminating"
    if cond is not None and cond.status == "False" and cond.reason:
        return cond.reason
    if pod.spec.node_name:
        return "Scheduled" if (pod.status and pod.status.phase) in (None, "Pending") else pod.status.phase
    return (pod.status.phase if pod.status else None) or "Pending"


def pod_row(pod: k8s.V1Pod, all_ns: bool, now: datetime | None = None) -> list[str]:
    req = obj.pod_requests(pod)
    row = [pod.metadata.name, pod_status(pod), pod.spec.node_name or "<none>", f"{req.milli_cpu}m",
           f"{req.memory // (1024 * 1024)}Mi", age(pod.metadata.creation_timestamp, now)]
    return [pod.metadata.namespace or "", *row] if all_ns else row


POD_HEADER = ["NAME", "STATUS", "NODE", "CPU", "MEMORY", "AGE"]
NODE_HEADER = ["NAME", "STATUS", "CPU", "MEMORY", "LABELS", "TAINTS", "AGE"]


def node_row(node: k8s.V1Node, now: datetime | None = None) -> list[str]:
    status = "Ready" if obj.node_ready(node) else "NotReady"
    if node.spec and node.spec.unschedulable:
        status += ",SchedulingDisabled"
    alloc = obj.node_allocatable(node)
    labels = ",".join(f"{k}={v}" for k, v in sorted((node.metadata.labels or {}).items())
                      if k != "kubernetes.io/hostname") or "<none>"
    taints = ",".join(f"{t.key}{'=' + t.value if t.value else ''}:{t.effect}"
                      for t in (node.spec.taints if node.spec else None) or []) or "<none>"
    return [node.metadata.name, status, f"{alloc.milli_cpu}m", f"{alloc.memory // (1024 * 1024)}Mi",
            labels, taints, age(node.metadata.creation_timestamp, now)]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                 widths: list[int] | None = None) -> str:
    """Left-aligned columns three spaces apart, as kubectl prints them."""
    w = widths if widths is not None else [len(h) for h in header]
    for r in rows:
        for i, cell in enumerate(r):
            w[i] = max(w[i], len(cell))
    lines = ["   ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _decode(kind: str, value: bytes) -> Any:
    return obj.decode_node(value) if kind == "nodes" else obj.decode_pod(value)


def _row(kind: str, o: Any, all_ns: bool) -> list[str]:
    return node_row(o) if kind == "nodes" else pod_row(o, all_ns)


def get(c: SyncClient, kind: str, namespace: str | None, watch: bool, out: TextIO = sys.stdout) -> None:
    prefix = obj.NODE_PREFIX if kind == "nodes" else obj.POD_PREFIX + (f"{namespace}/" if namespace else "")
    all_ns = kind == "pods" and namespace is None
    resp = c.get(prefix, prefix=True)
    objs = [_decode(kind, kv.value) for kv in resp.kvs]
    header = NODE_HEADER if kind == "nodes" else (["NAMESPACE", *POD_HEADER] if all_ns else POD_HEADER)
    rows = [_row(kind, o, all_ns) for o in objs]
    if not rows and not watch:
        print(f"No resources found{'' if namespace is None else f' in {namespace} namespace'}.", file=out)
        return
    widths = [len(h) for h in header]
    print(format_table(header, rows, widths), file=out, flush=True)
    if not watch:
        return
    # Rows after the first table keep its column widths (growing when a cell is longer).
    w = c.watch(prefix, prefix=True, start_revision=resp.header.revision + 1)
    try:
        for batch in w:
            for ev in batch.events:
                if ev.type == ev.DELETE:
                    name = ev.kv.key.decode().rsplit("/", 1)[-1]
                    gone = format_table(header, [[name, "Deleted"]], widths).splitlines()[1]
                    print(gone, file=out, flush=True)
                    continue
                row = _row(kind, _decode(kind, ev.kv.value), all_ns)
                print(format_table(header, [row], widths).splitlines()[1], file=out, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        w.cancel()


def delete(c: SyncClient, kind: str, name: str, namespace: str, out: TextIO = sys.stdout) -> int:
    key = obj.node_key(name) if kind == "node" else obj.pod_key(namespace, name)
    r = c.delete(key)
    if r.deleted:
        print(f'{kind} "{name}" deleted', file=out)
        return 0
    print(f'Error from server (NotFound): {kind}s "{name}" not found', file=out)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kvctl",
                                 description="Create, list and watch Pods and Nodes in the datastore.")
    ap.add_argument("--endpoints", default=DEFAULT_ENDPOINTS,
                    help="comma-separated HOST:PORT list (as etcdctl)")
    ap.add_argument("--user", default=os.environ.get(USER_ENV),
                    help=f"NAME[:PASSWORD] when the datastore has auth on (etcdctl's form; "
                    f"default ${USER_ENV}); without the password here it is read from ${PASSWORD_ENV}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    cr = sub.add_parser("create", help="create Pods/Nodes from YAML")
    cr.add_argument("-f", "--filename", required=True, help="YAML file ('-' for stdin)")
    g = sub.add_parser("get", help="list pods or nodes as a table")
    g.add_argument("kind", choices=["pods", "pod", "po", "nodes", "node", "no"])
    g.add_argument("-n", "--namespace", default=None)
    g.add_argument("-A", "--all-namespaces", action="store_true")
    g.add_argument("-w", "--watch", action="store_true", help="after listing, print a row per change")
    d = sub.add_parser("delete", help="delete one pod or node")
    d.add_argument("kind", choices=["pod", "node"])
    d.add_argument("name")
    d.add_argument("-n", "--namespace", default=obj.DEFAULT_NAMESPACE)
    a = ap.parse_args(argv)
    try:
        user, password = credentials(a.user, PASSWORD_ENV)
    except ValueError as e:
        ap.error(str(e))
    endpoints = [e.strip() for e in a.endpoints.split(",") if e.strip()]
    try:
        with SyncClient(endpoints, user=user, password=password) as c:
            if a.cmd == "create":
                if a.filename == "-":
                    text = sys.stdin.read()
                else:
                    with open(a.filename) as f:
                        text = f.read()
                return 1 if create(c, load_manifests(text)) else 0
            if a.cmd == "get":
                kind = "nodes" if a.kind.startswith("no") else "pods"
                ns = None if a.all_namespaces or kind == "nodes" else (a.namespace or obj.DEFAULT_NAMESPACE)
                get(c, kind, ns, a.watch)
                return 0
            return delete(c, a.kind, a.name, a.namespace)
    except ClientError as e:
        hint = (f"the datastore has auth on: give --user NAME[:PASSWORD] or set {USER_ENV} and "
                f"{PASSWORD_ENV}" if wants_credentials(str(e))
                else f"is a datastore reachable at {a.endpoints}?")
        print(f"kvctl: {e} ({hint})", file=sys.stderr)
        return 1
    except (ValueError, yaml.YAMLError) as e:
        print(f"kvctl: invalid manifest: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
