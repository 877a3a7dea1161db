"""The gRPC proxy in front of a 3-member cluster: the member it uses dies (kill -9); writes
move on to another endpoint and a watch through the proxy resumes there with every event,
in order and once. Plus TLS on both sides of the proxy and on the JSON gateway."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster_util import Cluster
from test_proxy import Proc, our_proxy

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.certs import CertAuthority
from datastore.testing.procs import ClientTLS, ServerProc, datastore_proc, etcdctl, free_port


@pytest.fixture
def procs() -> Iterator[list[Proc | ServerProc]]:
    started: list[Proc | ServerProc] = []
    yield started
    for p in reversed(started):
        p.stop()


def test_failover_and_watch_resume(tmp_path: Path, procs: list) -> None:
    cluster = Cluster(tmp_path, 3)
    procs.extend(cluster.procs)
    cluster.start()
    first = cluster.procs[0]  # the proxy's pool starts with the first endpoint
    proxy, _ = our_proxy(tmp_path, ",".join(p.endpoint for p in cluster.procs), procs)

    async def run() -> list[bytes]:
        async with grpc.aio.insecure_channel(proxy.endpoint) as ch:
            kv, watch = rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.WatchStub(ch)
            q: asyncio.Queue[rpc.WatchRequest] = asyncio.Queue()
            q.put_nowait(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"f")))

            async def reqs():  # type: ignore[no-untyped-def]
                while True:
                    yield await q.get()
            call = watch.Watch(reqs())
            assert (await call.read()).created
            for i in range(10):
                await kv.Put(rpc.PutRequest(key=b"f", value=b"%d" % i), timeout=30)
            first.kill()  # kill -9 the member the proxy talks to
            for i in range(10, 20):
                for _attempt in range(50):  # a write whose fate is unknown is not retried
                    try:
                        await kv.Put(rpc.PutRequest(key=b"f", value=b"%d" % i), timeout=10)
                        break
                    except grpc.aio.AioRpcError as e:
                        assert e.code() in (grpc.StatusCode.UNAVAILABLE,
                                            grpc.StatusCode.DEADLINE_EXCEEDED), e
            seen: list[bytes] = []
            while len(seen) < 20:
                resp = await asyncio.wait_for(call.read(), 60)
                seen.extend(ev.kv.value for ev in resp.events)
            call.cancel()
            return seen

    seen = asyncio.run(run())
    assert seen[:10] == [b"%d" % i for i in range(10)]
    # every write acknowledged after the failure arrives once and in order (a retried write
    # whose first attempt did land would show up twice: none was retried blindly)
    assert seen == [b"%d" % i for i in range(20)]
    out = etcdctl(proxy.endpoint, "get", "f", "--print-value-only").stdout.strip()
    assert out == b"19"


def test_tls_both_sides_and_https_gateway(tmp_path: Path, procs: list) -> None:
    ca = CertAuthority(tmp_path / "pki")
    server, proxy_cert = ca.issue("server"), ca.issue("proxy")
    http_port = free_port()
    d = datastore_proc(tmp_path, "tls0", client_scheme="https", tls=ClientTLS(ca.cert),
                       extra=[*server.flags(), f"--listen-client-http-urls=https://127.0.0.1:{http_port}"])
    procs.append(d)
    d.start()
    # the JSON gateway over https, with the client certificate settings
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    req = urllib.request.Request(f"https://127.0.0.1:{http_port}/v3/kv/put", method="POST",
                                 data=json.dumps({"key": "dA==", "value": "MQ=="}).encode())
    with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
        assert json.loads(r.read())["header"]["revision"] == "2"
    # the proxy: TLS to the cluster (--cacert) and to its clients (--cert-file/--key-file)
    port = free_port()
    p = Proc([*_proxy_argv(), "--endpoints", f"https://{d.endpoint}", "--cacert", str(ca.cert),
              "--listen-addr", f"127.0.0.1:{port}", "--cert-file", str(proxy_cert.cert),
              "--key-file", str(proxy_cert.key)], port, tmp_path / "tlsproxy.log")
    procs.append(p)
    flags = [f"--cacert={ca.cert}"]
    out = b""
    for _ in range(100):  # until the proxy serves (it has no plaintext port to poll)
        r = etcdctl(f"https://127.0.0.1:{port}", *flags, "get", "t", "--print-value-only",
                    check=False)
        out = r.stdout.strip()
        if r.returncode == 0:
            break
        assert p.popen.poll() is None, p.log.read_text()
    assert out == b"1"
    assert etcdctl(f"https://127.0.0.1:{port}", *flags, "put", "t", "2").stdout.strip() == b"OK"
    # plaintext to the TLS proxy is refused
    assert etcdctl(f"127.0.0.1:{port}", "get", "t", "--dial-timeout=2s", "--command-timeout=3s",
                   check=False).returncode != 0


def _proxy_argv() -> list[str]:
    import sys
    return [sys.executable, "-m", "datastore", "grpc-proxy", "start"]
