"""The commands a user runs: kvctl create/get/-w/delete and kvscheduler run/demo, as processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_util import wait_for

from datastore.testing.procs import ServerProc, datastore_proc, etcd_proc, etcdctl, free_port
from e2e.metrics_util import PROMTOOL, http_get, promtool_findings, raw_request, scrape, value

PODS = """
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {zone: a}}
status:
  allocatable: {cpu: "2", memory: 4Gi, pods: "110"}
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: small}
spec:
  containers: [{name: c, image: nginx, resources: {requests: {cpu: 500m, memory: 64Mi}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: big}
spec:
  containers: [{name: c, image: nginx, resources: {requests: {cpu: "3", memory: 64Mi}}}]
"""


def cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    p = datastore_proc(tmp_path, "m0", extra=["--heartbeat-interval", "50", "--election-timeout", "500"])
    p.start()
    yield p
    p.stop()


@pytest.mark.timeout(120)
def test_kvctl_and_scheduler_processes(tmp_path: Path, server: ServerProc) -> None:
    ep = server.endpoint
    kvctl = ("kvscheduler.kvctl", "--endpoints", ep)
    r = cli(*kvctl, "create", "-f", "-", stdin=PODS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["node/n1 created", "pod/small created", "pod/big created"]
    again = cli(*kvctl, "create", "-f", "-", stdin=PODS)
    assert again.returncode == 1 and 'pods "small" already exists' in again.stdout

    log = open(tmp_path / "watch.out", "w")  # noqa: SIM115 - the child's stdout for its lifetime
    watcher = subprocess.Popen([sys.executable, "-m", *kvctl, "get", "pods", "-w"], stdout=log,
                               stderr=subprocess.STDOUT, text=True)
    mport = free_port()
    sched = subprocess.Popen([sys.executable, "-m", "kvscheduler", "run", "--endpoints", ep,
                              "--lease-ttl", "2", "--metrics-addr", f"127.0.0.1:{mport}"],
                             stderr=subprocess.DEVNULL)
    try:
        def table() -> str:
            return (tmp_path / "watch.out").read_text()
        wait_for(lambda: "Scheduled" in table() and "Unschedulable" in table(), 60, "watch shows both")
        lines = table().splitlines()
        assert lines[0].split() == ["NAME", "STATUS", "NODE", "CPU", "MEMORY", "AGE"]
        assert any(ln.split()[:3] == ["small", "Scheduled", "n1"] for ln in lines)
        assert any(ln.split()[:3] == ["big", "Unschedulable", "<none>"] for ln in lines)
        got = cli(*kvctl, "get", "pods")
        assert got.returncode == 0
        rows = {ln.split()[0]: ln.split()[1:3] for ln in got.stdout.splitlines()[1:]}
        assert rows == {"big": ["Unschedulable", "<none>"], "small": ["Scheduled", "n1"]}
        nodes = cli(*kvctl, "get", "nodes").stdout.splitlines()
        assert nodes[1].split()[:4] == ["n1", "Ready", "2000m", "4096Mi"]
        # Deleting the small pod frees room, but not 3 cpu on a 2-cpu node: big stays pending;
        # a bigger node arriving makes it schedulable (the parked pod is retried on node add).
        assert cli(*kvctl, "delete", "pod", "small").returncode == 0
        bigger = PODS.split("---")[0].replace("name: n1", "name: n2").replace('cpu: "2"', 'cpu: "8"')
        assert cli(*kvctl, "create", "-f", "-", stdin=bigger).returncode == 0
        wait_for(lambda: any(ln.split()[:3] == ["big", "Scheduled", "n2"] for ln in table().splitlines()),
                 60, "big scheduled on the new node")
        # /metrics, with kube-scheduler's names: small and big bound, big once unschedulable
        text = scrape(f"http://127.0.0.1:{mport}")
        assert value(text, "scheduler_schedule_attempts_total", result="scheduled") == 2
        assert value(text, "scheduler_schedule_attempts_total", result="unschedulable") >= 1
        assert value(text, "scheduler_scheduling_attempt_duration_seconds_count",
                     result="scheduled") == 2
        assert value(text, "scheduler_pending_pods", queue="unschedulable") == 0
        assert value(text, "kvscheduler_is_leader") == 1
        assert value(text, "kvscheduler_bind_conflicts_total") == 0
        if PROMTOOL:
            assert promtool_findings(text) == set()
        assert http_get(f"http://127.0.0.1:{mport}/nope")[0] == 404
        assert raw_request(mport, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    finally:
        sched.terminate()
        watcher.terminate()
        sched.wait(15)
        watcher.wait(15)
        log.close()
    assert sched.returncode == 0  # SIGTERM is a clean shutdown


@pytest.mark.timeout(120)
def test_kvctl_and_scheduler_with_auth_on(tmp_path: Path, server: ServerProc) -> None:
    """With auth on: without a user kvctl says what to give and the scheduler, which cannot
    list, still stops on SIGTERM; with root's (kvctl: --user NAME:PASSWORD, scheduler:
    --user NAME and the password from its env) both work."""
    ep = server.endpoint
    etcdctl(ep, "user", "add", "root:rootpw")
    etcdctl(ep, "auth", "enable")
    anon = cli("kvscheduler.kvctl", "--endpoints", ep, "create", "-f", "-", stdin=PODS)
    assert anon.returncode == 1 and "user name is empty" in anon.stderr, anon
    assert "the datastore has auth on: give --user" in anon.stderr and "Traceback" not in anon.stderr
    log = tmp_path / "sched-anon.log"
    with open(log, "w") as f:
        sched = subprocess.Popen([sys.executable, "-m", "kvscheduler", "run", "--endpoints", ep],
                                 stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "user name is empty" in log.read_text(), 60, "the refusal in the log")
    finally:
        sched.terminate()
        sched.wait(15)
    assert sched.returncode == 0 and "Traceback" not in log.read_text()

    kvctl = ("kvscheduler.kvctl", "--endpoints", ep, "--user", "root:rootpw")
    r = cli(*kvctl, "create", "-f", "-", stdin=PODS)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "KVSCHEDULER_PASSWORD": "rootpw"}
    sched = subprocess.Popen([sys.executable, "-m", "kvscheduler", "run", "--endpoints", ep,
                              "--lease-ttl", "2", "--user", "root"], env=env,
                             stderr=subprocess.DEVNULL)
    try:
        def rows() -> dict[str, list[str]]:
            out = cli(*kvctl, "get", "pods").stdout.splitlines()[1:]
            return {ln.split()[0]: ln.split()[1:3] for ln in out}
        wait_for(lambda: rows() == {"big": ["Unschedulable", "<none>"], "small": ["Scheduled", "n1"]},
                 60, "small scheduled and big unschedulable")
    finally:
        sched.terminate()
        sched.wait(15)
    assert sched.returncode == 0
    nouser = cli("kvscheduler", "run", "--endpoints", ep, "--user", "root")
    assert nouser.returncode == 2 and "no password; give --user root:PASSWORD or set " \
        "KVSCHEDULER_PASSWORD" in nouser.stderr, nouser


@pytest.mark.timeout(180)
def test_demo_one_command(tmp_path: Path, server: ServerProc) -> None:
    t0 = time.monotonic()
    r = cli("kvscheduler", "demo", "--endpoints", server.endpoint, "--pods", "40", timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "where the pods landed" in out and "unschedulable pods" in out
    assert "0/7 nodes are available" in out
    assert "47 bound, 3 unschedulable" in out, out
    assert time.monotonic() - t0 < 150


@pytest.mark.timeout(180)
def test_demo_on_real_etcd(tmp_path: Path) -> None:
    """The scheduler speaks only the etcd API: the same flow runs with etcd 3.4 as the store."""
    etcd = etcd_proc(tmp_path).start()
    try:
        r = cli("kvscheduler", "demo", "--endpoints", etcd.endpoint, "--pods", "20", timeout=150)
    finally:
        etcd.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "27 bound, 3 unschedulable" in r.stdout, r.stdout
