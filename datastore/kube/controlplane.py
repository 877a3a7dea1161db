"""``datastore kube up`` / ``down``: start and stop a local control plane in one directory.

    DIR/state.json      what runs (pids, command lines) and the ports, kept for the next up
    DIR/kubeconfig      the admin's kubeconfig
    DIR/endpoints       the storage's client URLs, comma-separated
    DIR/logs/           one log per process
    DIR/storage/        the backend's data (kept by down; a second up reuses it)
    DIR/pki/, DIR/kubeconfigs/, DIR/run/   certificates, per-component kubeconfigs, cert dirs

Readiness is checked, never assumed: the storage answers a Range, the API server's
/readyz says ok, and every fake node reports Ready.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.kube import backends
from datastore.kube.apiclient import KubeAPI
from datastore.kube.daemons import Daemon
from datastore.kube.pki import Pki, write_kubeconfig
from datastore.testing import refs
from datastore.testing.procs import free_port

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"


class KubeError(RuntimeError):
    """``up`` could not finish; the message says what failed and where its log is."""


@dataclass
class Options:
    directory: Path
    backend: str = "datastore"
    members: int = 1
    nodes: int = 3
    compaction_interval: str = "5m"  # the API server's own compaction (its default)
    extra_apiserver_args: list[str] = field(default_factory=list)
    timeout: float = 240.0
    agent_nodes: int = 0  # nodes of `datastore kube agent`, which runs their pods locally
    storage_media_type: str = "protobuf"  # or "json": objects kvscheduler can read and write
    restore_from: Path | None = None  # an etcd-format snapshot the new storage starts from


@dataclass
class ControlPlane:
    """A running (or stopped) control plane, as recorded in ``DIR/state.json``."""

    directory: Path
    backend: str
    ports: dict[str, object]
    daemons: list[Daemon]

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def endpoints(self) -> list[str]:
        return (self.directory / "endpoints").read_text().strip().split(",")

    @property
    def apiserver_port(self) -> int:
        return int(self.ports["apiserver"])  # type: ignore[call-overload]

    def api(self, identity: str = "admin") -> KubeAPI:
        pki = Pki(self.directory / "pki")
        return KubeAPI("127.0.0.1", self.apiserver_port, pki.ca, *pki.client(identity))

    def daemon(self, name: str) -> Daemon:
        return next(d for d in self.daemons if d.name == name)

    def restart(self, name: str) -> Daemon:
        """Start a stopped (or killed) process again with its command line and log."""
        old = self.daemon(name)
        old.stop()
        new = Daemon.launch(old.name, old.argv, Path(old.log), cwd=self.directory)
        self.daemons[self.daemons.index(old)] = new
        self.save()
        return new

    def save(self) -> None:
        state = {"backend": self.backend, "ports": self.ports,
                 "daemons": [d.to_json() for d in self.daemons]}
        tmp = self.directory / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.directory / "state.json")

    @classmethod
    def load(cls, directory: Path) -> ControlPlane | None:
        try:
            state = json.loads((directory / "state.json").read_text())
        except FileNotFoundError:
            return None
        return cls(directory, state["backend"], state["ports"],
                   [Daemon(**d) for d in state.get("daemons", [])])


def _ports(previous: ControlPlane | None, opts: Options) -> dict[str, object]:
    """Ports chosen once per directory: members keep their addresses across ups."""
    if previous is not None:
        if previous.backend != opts.backend:
            raise KubeError(f"{opts.directory} holds a {previous.backend} control plane; "
                            f"use another --dir for --backend {opts.backend}")
        if len(previous.ports["storage"]) != opts.members:  # type: ignore[arg-type]
            raise KubeError(f"{opts.directory} was set up with "
                            f"{len(previous.ports['storage'])} member(s); "  # type: ignore[arg-type]
                            f"use the same --members, or another --dir")
        return previous.ports
    return {"storage": [[free_port(), free_port()] for _ in range(opts.members)],
            "apiserver": free_port(), "controller-manager": free_port(),
            "scheduler": free_port(), "kwok": free_port()}


def up(opts: Options, log: Callable[[str], None] = print) -> ControlPlane:
    """Start everything (or nothing, if it already runs) and wait until it is ready."""
    d = opts.directory.resolve()
    if opts.backend not in backends.BACKENDS:
        raise KubeError(f"unknown --backend {opts.backend!r} (one of {', '.join(backends.BACKENDS)})")
    if opts.backend == "kine" and opts.members != 1:
        raise KubeError("kine runs as one process: use --members 1 with --backend kine")
    if opts.members < 1 or opts.nodes < 0 or opts.agent_nodes < 0:
        raise KubeError("--members must be at least 1, --nodes and --agent-nodes at least 0")
    previous = ControlPlane.load(d)
    if previous is not None and any(x.alive() for x in previous.daemons):
        dead = [x.name for x in previous.daemons if not x.alive()]
        if dead:
            raise KubeError(f"a control plane in {d} is partly running ({', '.join(dead)} "
                            f"stopped): run `datastore kube down --dir {opts.directory}` first")
        if opts.restore_from is not None:
            raise KubeError(f"a control plane already runs in {d}; --restore-from starts a "
                            f"new one: use another --dir")
        log(f"already up in {d}")
        return previous
    if opts.restore_from is not None:
        _check_restore(opts)
    bins = {name: str(refs.binary(name)) for name in (
        "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")}
    stages = refs.asset("kwok", "kwok-stages.yaml")
    extra_bins = {}
    if opts.backend == "etcd":
        extra_bins["etcd_bin"] = str(refs.binary("etcd"))
        if opts.restore_from is not None:
            extra_bins["etcdutl_bin"] = str(refs.binary("etcdutl"))
    elif opts.backend == "kine":
        extra_bins["kine_bin"] = str(refs.binary("kine"))

    d.mkdir(parents=True, exist_ok=True)
    cp = ControlPlane(d, opts.backend, _ports(previous, opts), [])
    cp.save()
    logs = d / "logs"
    pki = Pki(d / "pki").ensure()
    server = f"https://127.0.0.1:{cp.apiserver_port}"
    kubeconfigs = d / "kubeconfigs"
    kubeconfigs.mkdir(exist_ok=True)
    kcfg = {i: write_kubeconfig(kubeconfigs / i, server, pki, i)
            for i in ("controller-manager", "scheduler", "kwok")}
    write_kubeconfig(cp.kubeconfig, server, pki, "admin")
    t0 = time.monotonic()
    deadline = t0 + opts.timeout

    def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon.launch(name, argv, logs / f"{name}.log", env=env, cwd=d)
        cp.daemons.append(daemon)
        cp.save()
        return daemon

    try:
        # 1. storage
        storage_ports = [tuple(p) for p in cp.ports["storage"]]  # type: ignore[union-attr]
        snapshot = opts.restore_from.resolve() if opts.restore_from is not None else None
        mems = backends.members(opts.backend, d / "storage", storage_ports,
                                snapshot=snapshot, **extra_bins)
        (d / "endpoints").write_text(",".join(m.client_url for m in mems) + "\n")
        if snapshot is not None:
            log(f"      restoring {snapshot} into {len(mems)} member(s)")
            _restore(mems, logs)
        log(f"[1/5] storage: {len(mems)} {opts.backend} member(s) at "
            f"{', '.join(m.client_url for m in mems)}")
        started = [start(m.name, m.argv) for m in mems]
        for m, daemon in zip(mems, started, strict=True):
            _wait(lambda m=m: _storage_ready(m.client_url), deadline, daemon,
                  f"{m.name} to answer a Range")
        log(f"      ready in {time.monotonic() - t0:.0f} s")

        # 2. kube-apiserver
        log(f"[2/5] kube-apiserver at {server}")
        cert, key = pki.serving
        api_argv = [
            bins["kube-apiserver"],
            f"--etcd-servers={','.join(m.client_url for m in mems)}",
            "--bind-address=127.0.0.1", f"--secure-port={cp.apiserver_port}",
            "--advertise-address=127.0.0.1",
            # Endpoints may not name loopback addresses, and loopback is all there is here.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={cert}", f"--tls-private-key-file={key}",
            f"--client-ca-file={pki.ca}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            f"--etcd-compaction-interval={opts.compaction_interval}",
            f"--cert-dir={d / 'run' / 'apiserver'}", "--profiling=false",
            *([f"--storage-media-type=application/{opts.storage_media_type}"]
              if opts.storage_media_type != "protobuf" else []),
            *opts.extra_apiserver_args]
        api_daemon = start("kube-apiserver", api_argv)
        api = cp.api()
        _wait(lambda: _get_ok(api, "/readyz"), deadline, api_daemon, "/readyz to say ok")
        log(f"      ready in {time.monotonic() - t0:.0f} s")

        # 3. controller-manager and scheduler, each with leader election
        log("[3/5] kube-controller-manager and kube-scheduler (leader election on)")
        cm = kcfg["controller-manager"]
        start("kube-controller-manager", [
            bins["kube-controller-manager"], f"--kubeconfig={cm}",
            f"--authentication-kubeconfig={cm}", f"--authorization-kubeconfig={cm}",
            "--bind-address=127.0.0.1", f"--secure-port={cp.ports['controller-manager']}",
            "--leader-elect=true", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca}", f"--cluster-signing-cert-file={pki.ca}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={d / 'run' / 'controller-manager'}", "--profiling=false"])
        sc = kcfg["scheduler"]
        start("kube-scheduler", [
            bins["kube-scheduler"], f"--kubeconfig={sc}",
            f"--authentication-kubeconfig={sc}", f"--authorization-kubeconfig={sc}",
            "--bind-address=127.0.0.1", f"--secure-port={cp.ports['scheduler']}",
            "--leader-elect=true", f"--cert-dir={d / 'run' / 'scheduler'}",
            "--profiling=false"])

        # 4. kwok and its fake nodes
        log(f"[4/5] kwok with {opts.nodes} fake node(s)")
        kwok = start("kwok", [
            bins["kwok"], f"--kubeconfig={kcfg['kwok']}", f"--config={stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40", "--cidr=10.244.0.1/16",
            f"--server-address=127.0.0.1:{cp.ports['kwok']}"])
        for i in range(opts.nodes):
            _create_node(api, f"kwok-node-{i}")
        agent = None
        if opts.agent_nodes:
            log(f"      and `datastore kube agent` with {opts.agent_nodes} node(s) running pods locally")
            agent = start("agent", [sys.executable, "-m", "datastore", "kube", "agent", "--dir", str(d),
                                    "--nodes", str(opts.agent_nodes)])

        # 5. everything ready
        log("[5/5] waiting for the controllers' leases and the nodes to be Ready")
        for lease in ("kube-controller-manager", "kube-scheduler"):
            _wait(lambda lease=lease: _get_ok(
                api, f"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{lease}"),
                deadline, cp.daemon(lease), f"{lease} to take its leader lease")
        _wait(lambda: _ready_nodes(api) >= opts.nodes, deadline, kwok,
              f"{opts.nodes} node(s) to be Ready")
        if agent is not None:
            _wait(lambda: _ready_nodes(api, "agent") >= opts.agent_nodes, deadline, agent,
                  f"{opts.agent_nodes} agent node(s) to be Ready")
    except BaseException:
        for daemon in reversed(cp.daemons):
            daemon.stop(5)
        raise
    # The matching kubectl beside the kubeconfig, for a machine with none on PATH.
    link = d / "bin" / "kubectl"
    link.parent.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(bins["kubectl"])
    log(f"control plane up in {time.monotonic() - t0:.0f} s; logs in {logs}")
    log(f"next: KUBECONFIG={cp.kubeconfig} kubectl get nodes   (kubectl v1.37.2: {link})")
    return cp


def _check_restore(opts: Options) -> None:
    """Refuse before anything is written: a snapshot restores only into empty storage."""
    if opts.backend == "kine":
        raise KubeError("--restore-from takes an etcd snapshot: use --backend datastore or etcd")
    snap = opts.restore_from
    assert snap is not None
    if not snap.is_file():
        raise KubeError(f"--restore-from {snap}: no such file (an etcd snapshot, as "
                        f"`etcdctl snapshot save` writes)")
    storage = opts.directory.resolve() / "storage"
    if storage.is_dir() and any(storage.iterdir()):
        raise KubeError(f"{storage} already holds data: run `up` without --restore-from to "
                        f"start on it, or use another --dir to restore")


def _restore(mems: list[backends.Member], logs: Path) -> None:
    """Restore the snapshot once per member; on a failure the data dirs these restores
    made are removed (never one that was there before), so the same ``up
    --restore-from`` can run again."""
    logs.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    for m in mems:
        assert m.restore_argv is not None and m.data_dir is not None
        if m.data_dir.exists():
            raise KubeError(f"{m.data_dir} already exists: --restore-from needs an empty "
                            f"storage directory")
        log_path = logs / f"restore-{m.name}.log"
        with open(log_path, "wb") as out:
            rc = subprocess.run(m.restore_argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=600).returncode
        made.append(m.data_dir)
        if rc != 0:
            for data_dir in made:
                shutil.rmtree(data_dir, ignore_errors=True)
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise KubeError(f"restoring {m.name} failed (exit {rc}); {log_path} ends:\n{tail}")


def down(directory: Path, log: Callable[[str], None] = print) -> bool:
    """Stop every process ``up`` started in ``directory`` (data is kept); False if none."""
    cp = ControlPlane.load(directory.resolve())
    if cp is None:
        return False
    for daemon in reversed(cp.daemons):
        if daemon.alive():
            log(f"stopping {daemon.name} (pid {daemon.pid})")
            daemon.stop()
    cp.daemons = []
    cp.save()
    return True


def _wait(cond: Callable[[], bool], deadline: float, daemon: Daemon, what: str) -> None:
    while True:
        if not daemon.alive():
            raise KubeError(f"{daemon.name} exited while waiting for {what}; "
                            f"its log ({daemon.log}) ends:\n{daemon.log_tail()}")
        try:
            if cond():
                return
        except (OSError, grpc.RpcError):
            pass
        if time.monotonic() > deadline:
            raise KubeError(f"timed out waiting for {what}; {daemon.name}'s log "
                            f"({daemon.log}) ends:\n{daemon.log_tail()}")
        time.sleep(0.2)  # poll interval of the condition above


def _storage_ready(url: str) -> bool:
    with grpc.insecure_channel(url.removeprefix("http://")) as ch:
        rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"/", limit=1), timeout=2)
    return True


def _get_ok(api: KubeAPI, path: str) -> bool:
    status, _ = api.get(path)
    return status == 200


def _create_node(api: KubeAPI, name: str) -> None:
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": name,
                                "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}},
    }
    status, body = api.post("/api/v1/nodes", node)
    if status not in (201, 409):  # 409: the node exists from an earlier up
        raise KubeError(f"creating node {name}: HTTP {status}: {body}")


def _ready_nodes(api: KubeAPI, kind: str = "kwok") -> int:
    status, body = api.get(f"/api/v1/nodes?labelSelector=type%3D{kind}")
    if status != 200:
        return 0
    return sum(1 for n in body.get("items", []) for c in n.get("status", {}).get("conditions", [])
               if c.get("type") == "Ready" and c.get("status") == "True")


def default_dir() -> Path:
    return Path(os.environ.get("DATASTORE_KUBE_DIR", "kube.datastore"))
