"""`auth enable` racing a stream of writes from a user with no permissions.

A write checked while auth was still off but applied after the enable must be refused at
apply, as etcd does (each request in the log carries the auth revision it was checked at;
0 when auth was off, answered ``etcdserver: user name is empty``). The user is known by
its client certificate, so the same writes are unauthenticated before the enable and
refused for lack of permission after it. The invariant: no write by that user is applied
at a KV revision above the one the enable was applied at. Real etcd 3.6 runs the same
race, so the test states etcd's behaviour and not only ours.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e_util import target_is_etcd

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc as g
from datastore.testing import refs
from datastore.testing.certs import CertAuthority
from datastore.testing.procs import ClientTLS, ServerProc, datastore_proc, etcd_proc

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="runs datastore and etcd itself")

WRITERS = 8
WARM_UP = 40  # successful writes before the enable: the stream is running at full speed
REFUSED_TO_STOP = 5  # each writer stops after this many refusals in a row
# What etcd answers a write from this user once auth is on (rev 0, no permission, stale).
REFUSALS = {"etcdserver: user name is empty", "etcdserver: permission denied",
            "etcdserver: revision of auth store is old"}


@pytest.fixture(params=["datastore", "etcd-3.6"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerProc, CertAuthority]]:
    ca = CertAuthority(tmp_path / "pki")
    flags = [*ca.issue("server").flags(), "--trusted-ca-file", str(ca.cert), "--client-cert-auth"]
    root = ca.issue("root", server=False)
    tls = ClientTLS(ca.cert, root.cert, root.key)
    if request.param == "datastore":
        proc = datastore_proc(tmp_path, "ds", extra=flags, client_scheme="https", tls=tls)
    else:
        proc = etcd_proc(tmp_path, "etcd36", extra=flags, client_scheme="https", tls=tls,
                         binary=refs.binary("etcd"))
    proc.start()
    try:
        yield proc, ca
    finally:
        proc.stop()


def test_writes_in_flight_across_auth_enable_are_checked(server: tuple[ServerProc, CertAuthority]) -> None:
    proc, ca = server
    root_pair, nobody_pair = ca.issue("root", server=False), ca.issue("nobody", server=False)
    root_ch = ClientTLS(ca.cert, root_pair.cert, root_pair.key).channel(proc.client_url)
    auth, kv = g.AuthStub(root_ch), g.KVStub(root_ch)
    auth.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"), timeout=30)
    auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=30)
    auth.UserAdd(pb.AuthUserAddRequest(name="nobody", password="n"), timeout=30)  # no roles

    applied: list[int] = []  # revisions of acknowledged writes
    refused: list[str] = []
    lock = threading.Lock()
    warmed = threading.Event()

    def writer(i: int) -> None:
        ch = ClientTLS(ca.cert, nobody_pair.cert, nobody_pair.key).channel(proc.client_url)
        put = g.KVStub(ch).Put
        in_a_row = n = 0
        while in_a_row < REFUSED_TO_STOP:
            n += 1
            try:
                rev = put(pb.PutRequest(key=f"w/{i}/{n}".encode(), value=b"x"), timeout=30).header.revision
            except grpc.RpcError as e:
                with lock:
                    refused.append(e.details() or e.code().name)
                in_a_row += 1
                continue
            in_a_row = 0
            with lock:
                applied.append(rev)
                if len(applied) >= WARM_UP:
                    warmed.set()
        ch.close()

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(WRITERS)]
    for t in threads:
        t.start()
    assert warmed.wait(120), "the writers never got going"
    enabled_at = auth.AuthEnable(pb.AuthEnableRequest(), timeout=30).header.revision
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a writer was still being let through after auth enable"

    assert set(refused) <= REFUSALS, set(refused) - REFUSALS
    late = [r for r in applied if r > enabled_at]
    assert not late, f"{len(late)} writes acknowledged at revisions after auth enable ({enabled_at})"
    # and in the store (a write whose answer was lost counts as much as an answered one)
    stored = kv.Range(pb.RangeRequest(key=b"w/", range_end=b"w0", keys_only=True), timeout=30)
    assert stored.count == len(applied)
    assert max(k.mod_revision for k in stored.kvs) <= enabled_at
    root_ch.close()
