"""Flags from environment variables, as etcd's pkg/flags does: ETCD_<FLAG> (and, ours,
DATASTORE_<FLAG>), a flag also on the command line is an error, unknown ETCD_ variables
are warned about. Checked against real etcd 3.4 given the same environment."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from datastore.cli import main
from datastore.server.config import add_serve_arguments, apply_env
from datastore.testing.procs import ETCD_BIN, ServerProc, datastore_proc, etcd_proc, etcdctl, free_port


def env_only(kind: str, base: Path, prefix: str = "ETCD") -> ServerProc:
    """A member configured by environment variables alone (no flags)."""
    cp, pp = free_port(), free_port()
    name = f"{kind}-env"
    data = base / kind / "data"
    env = {
        "NAME": name, "DATA_DIR": str(data),
        "LISTEN_CLIENT_URLS": f"http://127.0.0.1:{cp}",
        "ADVERTISE_CLIENT_URLS": f"http://127.0.0.1:{cp}",
        "LISTEN_PEER_URLS": f"http://127.0.0.1:{pp}",
        "INITIAL_ADVERTISE_PEER_URLS": f"http://127.0.0.1:{pp}",
        "INITIAL_CLUSTER": f"{name}=http://127.0.0.1:{pp}",
        "INITIAL_CLUSTER_TOKEN": "from-env",
        "STRICT_RECONFIG_CHECK": "false",  # a boolean, Go's ParseBool spelling
    }
    argv = [ETCD_BIN] if kind == "etcd" else [sys.executable, "-m", "datastore"]
    p = ServerProc(kind, name, data, cp, pp, argv, base / f"{kind}.log",
                   env={f"{prefix}_{k}": v for k, v in env.items()})
    p.env["ETCD_NOT_A_FLAG"] = "1"
    return p


def test_member_configured_from_env_like_etcd(tmp_path: Path, started: list[ServerProc]) -> None:
    procs = [env_only("etcd", tmp_path), env_only("datastore", tmp_path),
             env_only("datastore", tmp_path / "prefixed", prefix="DATASTORE")]
    started.extend(procs)
    for p in procs:
        p.launch()
    for p in procs:
        p.wait_ready(60)
    for p in procs:
        members = json.loads(etcdctl(p.endpoint, "member", "list", "-w", "json").stdout)["members"]
        assert [(m["name"], m["peerURLs"], m["clientURLs"]) for m in members] == [
            (p.name, [p.peer_url], [p.client_url])], p.kind
        assert p.data_dir.is_dir()
        # both warn about the ETCD_ variable that names no flag, and keep running
        assert "unrecognized environment variable ETCD_NOT_A_FLAG" in p.log_path.read_text()


def test_env_and_flag_together_is_an_error_like_etcd(tmp_path: Path) -> None:
    procs = [mk(tmp_path / kind, name="flagname") for kind, mk in
             (("etcd", etcd_proc), ("ds", datastore_proc))]
    for p in procs:
        p.env["ETCD_NAME"] = "envname"
        p.launch()
    for p in procs:
        assert p.popen is not None
        try:
            rc = p.popen.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError(f"{p.kind} ran with ETCD_NAME and --name both set") from None
        assert rc != 0
        tail = p.log_tail()
        assert "conflicting environment variable" in tail and "ETCD_NAME" in tail, tail


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    return p


def test_env_values_and_errors() -> None:
    p = _parser()
    warnings = apply_env(p, ["--name=n1"], {
        "ETCD_INITIAL_CLUSTER": "n1=http://127.0.0.1:2380", "DATASTORE_AUTO_TLS": "true",
        "ETCD_QUOTA_BACKEND_BYTES": "1024", "ETCD_BOGUS": "x", "DATASTORE_FAILPOINT": "y"})
    ns = p.parse_args(["--name=n1"])
    assert (ns.initial_cluster, ns.auto_tls, ns.quota_backend_bytes) == (
        "n1=http://127.0.0.1:2380", True, 1024)
    assert warnings == ["unrecognized environment variable ETCD_BOGUS"]  # ours are not warned
    # a flag still wins when its variable is absent, and the defaults stay without either
    assert _parser().parse_args([]).auto_tls is False
    for env, argv, says in [
        ({"ETCD_NAME": "a", "DATASTORE_NAME": "b"}, [], "disagree"),
        ({"ETCD_INITIAL_CLUSTER_STATE": "bogus"}, [], "must be one of new, existing"),
        ({"ETCD_CLIENT_CERT_AUTH": "maybe"}, [], "invalid boolean value"),
        ({"DATASTORE_DATA_DIR": "/x"}, ["--data-dir", "/y"], "shadowed by the command-line flag"),
    ]:
        with pytest.raises(ValueError, match=says):
            apply_env(_parser(), argv, env)


def test_cli_exits_with_the_env_error(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ETCD_SNAPSHOT_COUNT", "lots")
    assert main(["serve"]) == 2
    assert "ETCD_SNAPSHOT_COUNT='lots'" in capsys.readouterr().err
