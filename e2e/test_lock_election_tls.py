"""Lock and Election on a member whose only client URL is https with client-cert auth.

The services reach their own member through its client port, so on a TLS-only member
they must dial with TLS and present a certificate the listener accepts. Runs on
datastore and real etcd 3.4.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.api.v3electionpb import v3election_pb2 as epb
from datastore.api.v3electionpb import v3election_pb2_grpc
from datastore.api.v3lockpb import v3lock_pb2 as lpb
from datastore.api.v3lockpb import v3lock_pb2_grpc
from datastore.testing import certs
from datastore.testing.procs import (
    ETCDCTL_BIN,
    ServerProc,
    datastore_proc,
    etcd_proc,
    free_port,
)

WAIT = 30.0


def wait_tls_ready(proc: ServerProc, creds: grpc.ChannelCredentials) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        assert proc.popen is not None and proc.popen.poll() is None, proc.log_tail()
        # A fresh channel per attempt: one whose first connection failed backs off ~1 s.
        with grpc.secure_channel(proc.endpoint, creds) as ch:
            try:
                rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=0.5)
                return
            except grpc.RpcError:
                assert time.monotonic() < deadline, f"{proc.kind} not ready:\n{proc.log_tail()}"
        time.sleep(0.05)  # poll interval of the condition above


@pytest.fixture(params=["datastore", "etcd"])
def tls_server(request: pytest.FixtureRequest,
               tmp_path: Path) -> Iterator[tuple[ServerProc, object, object]]:
    ca = certs.CertAuthority(tmp_path / "pki")
    server_cert = ca.issue("server")
    client_cert = ca.issue("client", server=False)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    extra = ["--listen-client-urls", url, "--advertise-client-urls", url, *server_cert.flags(),
             "--trusted-ca-file", str(ca.cert), "--client-cert-auth"]
    make = datastore_proc if request.param == "datastore" else etcd_proc
    proc = make(tmp_path / request.param, extra=extra, client_port=port)
    proc.launch()
    try:
        yield proc, ca, client_cert
    finally:
        proc.stop()


def test_lock_and_election_on_a_tls_only_member(tls_server: tuple[ServerProc, object, object]) -> None:
    proc, ca, client = tls_server
    creds = grpc.ssl_channel_credentials(ca.cert.read_bytes(), client.key.read_bytes(),  # type: ignore[attr-defined]
                                         client.cert.read_bytes())  # type: ignore[attr-defined]
    wait_tls_ready(proc, creds)
    with grpc.secure_channel(proc.endpoint, creds) as ch:
        lock = v3lock_pb2_grpc.LockStub(ch)
        kv = rpc_pb2_grpc.KVStub(ch)
        held = lock.Lock(lpb.LockRequest(name=b"tl"), timeout=WAIT)
        assert held.key.startswith(b"tl/")

        # etcdctl over TLS queues behind the RPC holder and gets the lock after Unlock.
        ctl = subprocess.Popen(
            [ETCDCTL_BIN, f"--endpoints=https://{proc.endpoint}", f"--cacert={ca.cert}",  # type: ignore[attr-defined]
             f"--cert={client.cert}", f"--key={client.key}", "lock", "tl", "echo", "inside"],  # type: ignore[attr-defined]
            env={**os.environ, "ETCDCTL_API": "3"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + WAIT
            while kv.Range(rpc_pb2.RangeRequest(key=b"tl/", range_end=b"tl0", count_only=True),
                           timeout=WAIT).count < 2:
                assert ctl.poll() is None and time.monotonic() < deadline, "etcdctl did not queue"
                time.sleep(0.02)  # poll interval of the condition
            assert ctl.poll() is None, "etcdctl ran its command while the lock was held"
            lock.Unlock(lpb.UnlockRequest(key=held.key), timeout=WAIT)
            out, err = ctl.communicate(timeout=WAIT)
            assert ctl.returncode == 0 and out == b"inside\n", err.decode(errors="replace")
        finally:
            if ctl.poll() is None:
                ctl.kill()
                ctl.communicate()

        election = v3election_pb2_grpc.ElectionStub(ch)
        won = election.Campaign(epb.CampaignRequest(name=b"te", value=b"v"), timeout=WAIT)
        got = election.Leader(epb.LeaderRequest(name=b"te"), timeout=WAIT)
        assert (got.kv.key, got.kv.value) == (won.leader.key, b"v")
