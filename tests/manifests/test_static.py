"""The operator-less StatefulSet deployment and its tls overlay, checked object by object."""

from __future__ import annotations

import re

import pytest

from .checks import hardening_gaps, named_port, restricted_violations, selects
from .render import Obj, env_value, one, render

TLS_FLAGS = {
    "--cert-file": "/etc/datastore/tls/server/tls.crt",
    "--key-file": "/etc/datastore/tls/server/tls.key",
    "--trusted-ca-file": "/etc/datastore/tls/server/ca.crt",
    "--peer-cert-file": "/etc/datastore/tls/peer/tls.crt",
    "--peer-key-file": "/etc/datastore/tls/peer/tls.key",
    "--peer-trusted-ca-file": "/etc/datastore/tls/peer/ca.crt",
}


@pytest.fixture(params=["static", "static/tls"])
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return render(request.param)


def sts_of(objs: list[Obj]) -> Obj:
    return one(objs, "StatefulSet", "datastore")


def member(objs: list[Obj]) -> Obj:
    (c,) = sts_of(objs)["spec"]["template"]["spec"]["containers"]
    return c


def test_objects(objs: list[Obj]) -> None:
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objs) == [
        ("PodDisruptionBudget", "datastore"), ("Service", "datastore"),
        ("Service", "datastore-headless"), ("StatefulSet", "datastore")]
    assert all("namespace" not in o["metadata"] for o in objs), "the user picks the namespace"


def test_selectors_match_the_pods(objs: list[Obj]) -> None:
    sts = sts_of(objs)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert selects(sts["spec"]["selector"], labels)
    for svc in ("datastore", "datastore-headless"):
        assert selects(one(objs, "Service", svc)["spec"]["selector"], labels), svc
    pdb = one(objs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert not selects({"app.kubernetes.io/name": "other"}, labels)


def test_headless_service_and_script_inputs_agree(objs: list[Obj]) -> None:
    sts = sts_of(objs)
    headless = one(objs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    c = member(objs)
    # The script builds DNS names from these; they must follow the objects they name.
    assert env_value(c, "HEADLESS_SERVICE") == sts["spec"]["serviceName"]
    assert env_value(c, "CLUSTER_SIZE") == str(sts["spec"]["replicas"]) == "3"
    fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert fields == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


def test_service_ports_target_container_ports(objs: list[Obj]) -> None:
    names = {p["name"]: p["containerPort"] for p in member(objs)["ports"]}
    assert names == {"client": 2379, "peer": 2380, "metrics": 2381}
    for svc in ("datastore", "datastore-headless"):
        for p in one(objs, "Service", svc)["spec"]["ports"]:
            assert names[p["targetPort"]] == p["port"], (svc, p)


def test_probes_use_the_metrics_port(objs: list[Obj]) -> None:
    c = member(objs)
    paths = {k: (c[k]["httpGet"]["path"], named_port(c, c[k]["httpGet"]["port"]))
             for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": ("/livez", 2381), "livenessProbe": ("/livez", 2381),
                     "readinessProbe": ("/readyz", 2381)}
    assert all("scheme" not in c[k]["httpGet"] for k in paths), "metrics stay plain http"
    assert "--listen-metrics-urls http://0.0.0.0:2381" in c["command"][2]


def test_data_dir_is_on_the_claim_and_the_quota_fits(objs: list[Obj]) -> None:
    sts = sts_of(objs)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in member(objs)["volumeMounts"]}
    script = member(objs)["command"][2]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert f"--data-dir {mounts[claim['metadata']['name']]}/data" in script
    (quota,) = re.findall(r"--quota-backend-bytes (\d+)", script)
    assert int(quota) <= 2**30 // 2, "NOSPACE must trip long before the volume is full"


def test_member_command_shape(objs: list[Obj]) -> None:
    c = member(objs)
    assert c["command"][:2] == ["/bin/sh", "-c"] and c["command"][3] == "member"
    script = c["command"][2]
    for flag in ("--initial-cluster-state new", '--initial-cluster "$cluster"', '"$@"'):
        assert flag in script


def test_pod_is_hardened(objs: list[Obj]) -> None:
    pod = sts_of(objs)["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert hardening_gaps(pod) == []
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False


def test_plain_base_has_no_tls() -> None:
    c = member(render("static"))
    assert "args" not in c and env_value(c, "URL_SCHEME") == "http"


def test_tls_overlay_sets_flags_and_mounts_secrets() -> None:
    objs = render("static/tls")
    c = member(objs)
    assert env_value(c, "URL_SCHEME") == "https"
    assert [e["name"] for e in c["env"]].count("URL_SCHEME") == 1
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in c["args"])
    assert args == {**TLS_FLAGS, "--client-cert-auth": "", "--peer-client-cert-auth": ""}
    pod = sts_of(objs)["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"server-tls": "datastore-server-tls", "peer-tls": "datastore-peer-tls"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"] if m["name"] in secrets}
    for flag, path in TLS_FLAGS.items():
        directory = path.rsplit("/", 1)[0]
        assert directory in mounts and mounts[directory]["readOnly"] is True, flag
