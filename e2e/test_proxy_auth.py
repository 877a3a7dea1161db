"""etcdctl --user through our gRPC proxy: the token the proxy forwards authenticates every
call (watches and serializable reads included), and denied requests stay denied."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
from test_proxy import ETCDCTL_BIN, our_proxy, procs  # noqa: F401 - fixture

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import datastore_proc, etcdctl


def test_etcdctl_user_through_proxy(tmp_path: Path, procs: list) -> None:  # noqa: F811
    d = datastore_proc(tmp_path, "pa0")
    procs.append(d)
    d.start()
    ep = d.endpoint
    etcdctl(ep, "user", "add", "root:rootpw")
    etcdctl(ep, "role", "add", "a-only")
    etcdctl(ep, "role", "grant-permission", "a-only", "readwrite", "/a/", "--prefix=true")
    etcdctl(ep, "user", "add", "alice:alicepw")
    etcdctl(ep, "user", "grant-role", "alice", "a-only")
    etcdctl(ep, "auth", "enable")
    proxy, _ = our_proxy(tmp_path, ep, procs)
    p = proxy.endpoint
    root, alice = "--user=root:rootpw", "--user=alice:alicepw"
    assert etcdctl(p, root, "put", "/b/1", "x").stdout.strip() == b"OK"
    assert etcdctl(p, alice, "put", "/a/1", "y").stdout.strip() == b"OK"
    denied = etcdctl(p, alice, "get", "/b/1", check=False)
    assert denied.returncode != 0 and b"permission denied" in denied.stderr
    for _ in range(2):  # serializable: the second one could come from a cache; still denied
        denied = etcdctl(p, alice, "get", "/b/1", "--consistency=s", check=False)
        assert denied.returncode != 0 and b"permission denied" in denied.stderr
        assert etcdctl(p, root, "get", "/b/1", "--consistency=s",
                       "--print-value-only").stdout.strip() == b"x"
    assert etcdctl(p, "get", "/a/1", check=False).returncode != 0  # no user at all
    # leases through the proxy's shared keep-alive stream, under auth
    lease = etcdctl(p, alice, "lease", "grant", "30").stdout.split()[1].decode()
    assert b"keepalived" in etcdctl(p, alice, "lease", "keep-alive", "--once", lease).stdout
    etcdctl(p, root, "lease", "revoke", lease)
    wrong = etcdctl(p, "--user=alice:nope", "get", "/a/1", check=False)
    assert wrong.returncode != 0 and b"authentication failed" in wrong.stderr
    # a watch through the proxy with alice's token: allowed on /a/, refused on /b/
    rev = json.loads(etcdctl(p, alice, "put", "/a/w", "1", "-w", "json").stdout)["header"]["revision"]
    w = subprocess.Popen(["timeout", "60", ETCDCTL_BIN, f"--endpoints={p}", alice, "watch",
                          "/a/w", f"--rev={rev}"], stdout=subprocess.PIPE,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
                         start_new_session=True)  # killed as a group: timeout and etcdctl
    assert w.stdout is not None
    try:
        assert [w.stdout.readline().strip() for _ in range(3)] == [b"PUT", b"/a/w", b"1"]
    finally:
        os.killpg(w.pid, signal.SIGKILL)  # w.kill() alone would orphan etcdctl
        w.wait()
    with grpc.insecure_channel(p) as ch:
        token = rpc_pb2_grpc.AuthStub(ch).Authenticate(
            rpc.AuthenticateRequest(name="alice", password="alicepw"), timeout=30).token
        call = rpc_pb2_grpc.WatchStub(ch).Watch(
            iter([rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"/b/1"))]),
            metadata=[("token", token)], timeout=30)
        first = next(call)
        assert first.created and first.canceled and "permission denied" in first.cancel_reason
        call.cancel()
