"""The static StatefulSet's own container command starts a real 3-member cluster.

No Kubernetes API server runs here, so each pod is played by a local process running the
command `kubectl kustomize manifests/static` renders (see tests/manifests/localrun.py for the few
substitutions). The real etcdctl then uses the cluster.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_util import wait_for

from datastore.testing.procs import ServerProc, etcdctl
from tests.manifests.localrun import member_proc, member_spec, metrics_port, port_block


@pytest.fixture
def static_cluster(tmp_path: Path) -> Iterator[list[ServerProc]]:
    spec = member_spec("static")
    base = port_block(spec.replicas)
    procs = [member_proc(spec, k, base, tmp_path) for k in range(spec.replicas)]
    try:
        for p in procs:
            p.launch()
        for p in procs:
            p.wait_ready(timeout=90)
        yield procs
    finally:
        for p in procs:
            p.stop()


def endpoints(procs: list[ServerProc]) -> str:
    return ",".join(p.endpoint for p in procs)


def member_list(procs: list[ServerProc]) -> list[dict[str, object]]:
    out = etcdctl(endpoints(procs), "member", "list", "-w", "json").stdout
    return sorted(json.loads(out)["members"], key=lambda m: str(m.get("name", "")))


def started_members(procs: list[ServerProc]) -> list[dict[str, object]] | None:
    """The member list once it has 3 started members (None meanwhile, also on errors)."""
    try:
        ms = member_list(procs)
    except subprocess.SubprocessError:
        return None  # a member still electing or catching up: poll again
    return ms if len(ms) == 3 and all(m.get("name") and m.get("clientURLs") for m in ms) else None


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_static_statefulset_command_forms_a_cluster(static_cluster: list[ServerProc]) -> None:
    procs = static_cluster
    spec = member_spec("static")
    members = wait_for(lambda: started_members(procs), timeout=60, what="3 started members")
    assert [m["name"] for m in members] == ["datastore-0", "datastore-1", "datastore-2"]
    for m, p in zip(members, procs, strict=True):
        assert m["peerURLs"] == [p.peer_url] and m["clientURLs"] == [p.client_url]
        assert not m.get("isLearner")

    etcdctl(procs[0].endpoint, "put", "/manifests/key", "from-the-statefulset")
    for p in procs:
        got = etcdctl(p.endpoint, "get", "/manifests/key", "--print-value-only").stdout
        assert got.decode().strip() == "from-the-statefulset", p.name
    health = etcdctl(endpoints(procs), "endpoint", "health", check=False)
    assert health.returncode == 0, health.stderr.decode()

    # The kubelet's probes: the paths in the manifest, on each member's metrics port.
    for p in procs:
        for path in spec.probe_paths():
            url = f"http://127.0.0.1:{metrics_port(p)}{path}"
            assert wait_for(lambda u=url: http_status(u) == 200, timeout=30, what=url)
    assert "starting static member" in procs[0].log_tail(200)


def test_restarted_pod_rejoins_with_its_data(static_cluster: list[ServerProc]) -> None:
    """A pod restart runs the same command (--initial-cluster-state new) on its old data."""
    procs = static_cluster
    etcdctl(procs[0].endpoint, "put", "k", "before")
    ids = {m["name"]: m["ID"] for m in wait_for(lambda: started_members(procs), timeout=60)}
    procs[1].kill()
    # if the killed pod led, the write waits for (or times out before) the next election
    wait_for(lambda: etcdctl(procs[0].endpoint, "put", "k", "while-down",
                             check=False).returncode == 0, timeout=60, what="write while down")
    procs[1].launch().wait_ready(timeout=90)
    wait_for(lambda: etcdctl(procs[1].endpoint, "get", "k", "--print-value-only",
                             "--consistency=s", check=False).stdout.strip() == b"while-down",
             timeout=60, what="restarted member catches up")
    members = wait_for(lambda: started_members(procs), timeout=60)
    assert {m["name"]: m["ID"] for m in members} == ids


def test_command_refuses_a_pod_name_without_ordinal(tmp_path: Path) -> None:
    proc = member_proc(member_spec("static"), 0, port_block(1), tmp_path)
    proc.env["POD_NAME"] = "datastore"
    out = subprocess.run(proc.argv, env={**proc.env, "PATH": proc.env["PATH"]}, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2
    assert "must end in -<ordinal>" in out.stderr
