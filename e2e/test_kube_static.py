"""manifests/static (and its tls overlay) deployed for real: the StatefulSet controller
makes the pods and claims, the real kube-scheduler binds them to the agent's nodes, the
agent (``datastore kube agent``, standing in for the kubelet) runs the manifests' own
container command, and the members find each other through the headless Service's names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_util import in_cluster, kjson, kubectl, pods, running, wait_for, wait_pods_ready

from datastore.kube.controlplane import ControlPlane
from datastore.testing.certs import CertAuthority
from datastore.testing.procs import ETCDCTL_BIN, etcdctl
from tests.manifests.render import MANIFESTS

SELECTOR = "app.kubernetes.io/name=datastore"
AGENT_NODES = {"agent-0", "agent-1"}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    # no kwok nodes: the scheduler can only choose the agent's, whose pods really run
    with running(tmp_path_factory.mktemp("kube-static"), nodes=0, agent_nodes=2) as plane:
        yield plane


def members(endpoints: str, *flags: str) -> list[dict] | None:
    r = etcdctl(endpoints, *flags, "member", "list", "-w", "json", check=False, timeout=15)
    if r.returncode != 0:
        return None
    ms = sorted(json.loads(r.stdout)["members"], key=lambda m: m.get("name", ""))
    return ms if len(ms) == 3 and all(m.get("name") for m in ms) else None


def deploy(cp: ControlPlane, ns: str, overlay: str) -> list[dict]:
    kubectl(cp, "apply", "-n", ns, "-k", str(MANIFESTS / overlay))
    running = wait_pods_ready(cp, ns, SELECTOR, 3)
    for p in running:
        assert p["spec"]["nodeName"] in AGENT_NODES, p["spec"]
        assert p["status"]["podIP"].startswith("127.") and p["status"]["podIP"] != "127.0.0.1"
    assert len({p["status"]["podIP"] for p in running}) == 3
    # bound by the real kube-scheduler, not by anything of ours
    events = kjson(cp, "-n", ns, "get", "events", "--field-selector", "reason=Scheduled")["items"]
    assert {e["involvedObject"]["name"] for e in events} >= {p["metadata"]["name"] for p in running}
    assert {e["reportingComponent"] for e in events} == {"default-scheduler"}, events
    # each claim got a volume from the agent's provisioner (the default StorageClass)
    claims = kjson(cp, "-n", ns, "get", "pvc")["items"]
    assert sorted(c["metadata"]["name"] for c in claims) == [f"data-datastore-{i}" for i in range(3)]
    assert {(c["status"]["phase"], c["spec"]["storageClassName"]) for c in claims} == {
        ("Bound", "agent-local")}
    return running


def test_static_statefulset_forms_a_cluster(cp: ControlPlane) -> None:
    ns = "static"
    kubectl(cp, "create", "namespace", ns)
    running = deploy(cp, ns, "static")
    eps = ",".join(f"{p['status']['podIP']}:2379" for p in running)
    ms = wait_for(lambda: members(eps), 90, "3 started members")
    assert [m["name"] for m in ms] == ["datastore-0", "datastore-1", "datastore-2"]
    for m in ms:
        host = f"{m['name']}.datastore-headless.{ns}.svc"
        assert m["peerURLs"] == [f"http://{host}:2380"] and m["clientURLs"] == [f"http://{host}:2379"]
        assert not m.get("isLearner")

    etcdctl(running[0]["status"]["podIP"] + ":2379", "put", "/static/key", "from-the-statefulset")
    for p in running:
        got = etcdctl(p["status"]["podIP"] + ":2379", "get", "/static/key", "--print-value-only")
        assert got.stdout.decode().strip() == "from-the-statefulset", p["metadata"]["name"]
    # the names resolve inside the cluster, as the members use them
    by_name = in_cluster(cp, str(ETCDCTL_BIN),
                         f"--endpoints=http://datastore-1.datastore-headless.{ns}.svc:2379",
                         "get", "/static/key", "--print-value-only")
    assert by_name.stdout.strip() == "from-the-statefulset"
    # the container's output through the API server (the agent's containerLogs endpoint)
    logs = kubectl(cp, "-n", ns, "logs", "datastore-0").stdout
    assert "starting static member" in logs and "serving client requests" in logs

    # A deleted pod comes back (the StatefulSet controller) on its claim: same member ID.
    before = {m["name"]: m["ID"] for m in ms}
    old_uid = running[1]["metadata"]["uid"]
    kubectl(cp, "-n", ns, "delete", "pod", "datastore-1", "--wait=true")
    again = wait_pods_ready(cp, ns, SELECTOR, 3)
    assert again[1]["metadata"]["uid"] != old_uid
    status = again[1]["status"]["containerStatuses"][0]
    assert status["ready"] and status["restartCount"] == 0
    eps = ",".join(f"{p['status']['podIP']}:2379" for p in again)
    ms = wait_for(lambda: members(eps), 90, "3 members after the pod came back")
    assert {m["name"]: m["ID"] for m in ms} == before
    got = etcdctl(again[1]["status"]["podIP"] + ":2379", "get", "/static/key", "--print-value-only")
    assert got.stdout.decode().strip() == "from-the-statefulset"


def test_tls_overlay_with_certificates_from_secrets(cp: ControlPlane, tmp_path: Path) -> None:
    ns = "static-tls"
    kubectl(cp, "create", "namespace", ns)
    ca = CertAuthority(tmp_path / "pki")
    names = [f"*.datastore-headless.{ns}.svc", f"datastore.{ns}.svc", "localhost"]
    server = ca.issue("server", hosts=names)
    peer = ca.issue("peer", hosts=[f"*.datastore-headless.{ns}.svc"])
    client = ca.issue("client", server=False)
    for secret, pair in (("datastore-server-tls", server), ("datastore-peer-tls", peer)):
        kubectl(cp, "-n", ns, "create", "secret", "generic", secret, "--type=kubernetes.io/tls",
                f"--from-file=tls.crt={pair.cert}", f"--from-file=tls.key={pair.key}",
                f"--from-file=ca.crt={ca.cert}")
    deploy(cp, ns, "static/tls")
    tls = [f"--cacert={ca.cert}", f"--cert={client.cert}", f"--key={client.key}"]
    eps = ",".join(f"https://datastore-{i}.datastore-headless.{ns}.svc:2379" for i in range(3))
    etcdctl_bin = str(ETCDCTL_BIN)

    def tls_members() -> list[dict] | None:
        r = in_cluster(cp, etcdctl_bin, f"--endpoints={eps}", *tls, "member", "list", "-w", "json",
                       check=False)
        if r.returncode != 0:
            return None
        ms = sorted(json.loads(r.stdout)["members"], key=lambda m: m.get("name", ""))
        return ms if len(ms) == 3 and all(m.get("name") for m in ms) else None

    ms = wait_for(tls_members, 90, "3 members over https")
    assert [m["peerURLs"][0] for m in ms] == [
        f"https://datastore-{i}.datastore-headless.{ns}.svc:2380" for i in range(3)]
    # the certificates verify against the names; without a client certificate: refused
    in_cluster(cp, etcdctl_bin, f"--endpoints={eps}", *tls, "put", "/tls/key", "v")
    refused = in_cluster(cp, etcdctl_bin, f"--endpoints={eps}", f"--cacert={ca.cert}",
                         "--dial-timeout=3s", "--command-timeout=5s", "get", "/tls/key", check=False)
    assert refused.returncode != 0
    # the mounted Secret is what the member reads (its files, with the manifest's mode)
    pod = pods(cp, ns, SELECTOR)[0]
    uid = pod["metadata"]["uid"]
    pod_dir = cp.directory / "agent" / "pods" / f"{ns}_{pod['metadata']['name']}_{uid}"
    mounted = pod_dir / "volumes" / "server-tls"
    assert (mounted / "tls.crt").read_bytes() == server.cert.read_bytes()
    assert oct((mounted / "tls.key").stat().st_mode & 0o777) == oct(0o440)
