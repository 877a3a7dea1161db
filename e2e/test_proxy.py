"""``datastore grpc-proxy start`` and ``datastore gateway start``, with the real etcdctl,
in front of datastore and of real etcd; and etcd's own proxy and gateway in front of
datastore.

The coalescing claims are measured: the server's watcher gauge
(``etcd_debugging_mvcc_watcher_total`` on its metrics URL) moves by one for N client
watches through the proxy, every client sees every event in order, and the proxy's own
counters show keep-alives and serializable reads absorbed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.testing.procs import (
    ETCD_BIN,
    ETCDCTL_BIN,
    ServerProc,
    auth_refusal,
    datastore_proc,
    etcd_proc,
    etcdctl,
    free_port,
)


class Proc:
    """A proxy/gateway process listening on 127.0.0.1:port."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port, self.log = port, log
        with open(log, "ab") as f:
            self.popen = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> Proc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"exited {self.popen.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with grpc.insecure_channel(self.endpoint) as ch:
                    rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc.StatusRequest(), timeout=1)
                return self
            except grpc.RpcError as e:
                if auth_refusal(e):  # answered (the member has auth on: Status is for users)
                    return self
                time.sleep(0.05)  # poll interval of the condition above
        raise TimeoutError(f"{self.endpoint} not serving: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def procs() -> Iterator[list[Proc | ServerProc]]:
    started: list[Proc | ServerProc] = []
    yield started
    for p in reversed(started):
        p.stop()


def our_proxy(tmp: Path, endpoints: str, started: list, *extra: str) -> tuple[Proc, str]:
    port, mport = free_port(), free_port()
    p = Proc([sys.executable, "-m", "datastore", "grpc-proxy", "start", "--endpoints", endpoints,
              "--listen-addr", f"127.0.0.1:{port}", "--metrics-addr", f"http://127.0.0.1:{mport}",
              *extra], port, tmp / f"proxy{port}.log")
    started.append(p)
    return p.wait_ready(), f"http://127.0.0.1:{mport}"


def our_gateway(tmp: Path, endpoints: str, started: list) -> Proc:
    port = free_port()
    p = Proc([sys.executable, "-m", "datastore", "gateway", "start", "--endpoints", endpoints,
              "--listen-addr", f"127.0.0.1:{port}"], port, tmp / f"gateway{port}.log")
    started.append(p)
    return p.wait_ready()


def metric(url: str, name: str) -> int:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    raise KeyError(name)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # poll interval of the condition above


def ds_with_metrics(tmp: Path, started: list, name: str = "ds") -> tuple[ServerProc, str]:
    mport = free_port()
    d = datastore_proc(tmp, name, extra=[f"--listen-metrics-urls=http://127.0.0.1:{mport}"])
    started.append(d)
    d.start()
    return d, f"http://127.0.0.1:{mport}"


N_WATCHERS = 40
N_EVENTS = 50


def test_watch_coalescing_one_upstream_watcher(tmp_path: Path, procs: list) -> None:
    d, dmetrics = ds_with_metrics(tmp_path, procs)
    proxy, pmetrics = our_proxy(tmp_path, d.endpoint, procs, "--no-range-cache")
    before = metric(dmetrics, "etcd_debugging_mvcc_watcher_total")

    async def run() -> tuple[list[list[bytes]], int, int]:
        chans = [grpc.aio.insecure_channel(proxy.endpoint) for _ in range(8)]
        created = 0
        results: list[list[bytes]] = [[] for _ in range(N_WATCHERS)]
        all_created = asyncio.Event()

        async def one(i: int) -> None:
            nonlocal created
            stub = rpc_pb2_grpc.WatchStub(chans[i % len(chans)])
            q: asyncio.Queue[rpc.WatchRequest] = asyncio.Queue()
            q.put_nowait(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"hot")))

            async def reqs():  # type: ignore[no-untyped-def]
                while True:
                    yield await q.get()
            call = stub.Watch(reqs())
            async for resp in call:
                if resp.created:
                    created += 1
                    if created == N_WATCHERS:
                        all_created.set()
                for ev in resp.events:
                    results[i].append(ev.kv.value)
                if len(results[i]) == N_EVENTS:
                    call.cancel()
                    return

        tasks = [asyncio.create_task(one(i)) for i in range(N_WATCHERS)]
        await asyncio.wait_for(all_created.wait(), 60)
        loop = asyncio.get_running_loop()
        during = await loop.run_in_executor(None, metric, dmetrics, "etcd_debugging_mvcc_watcher_total")
        upstream = await loop.run_in_executor(None, metric, pmetrics,
                                              "datastore_grpc_proxy_upstream_watchers")
        async with grpc.aio.insecure_channel(d.endpoint) as ch:  # writes go straight to the server
            kv = rpc_pb2_grpc.KVStub(ch)
            for n in range(N_EVENTS):
                await kv.Put(rpc.PutRequest(key=b"hot", value=str(n).encode()))
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        for c in chans:
            await c.close()
        return results, during, upstream

    results, during, upstream = asyncio.run(run())
    print(f"{N_WATCHERS} client watches via the proxy: server watchers {before} -> {during}, "
          f"proxy upstream watches {upstream}")
    assert during - before == 1
    assert upstream == 1
    expected = [str(n).encode() for n in range(N_EVENTS)]
    assert all(r == expected for r in results), "a client missed or reordered events"
    wait_for(lambda: metric(dmetrics, "etcd_debugging_mvcc_watcher_total") == before,
             "the shared upstream watch to go once every client left")
    assert metric(pmetrics, "etcd_grpc_proxy_events_coalescing_total") == (N_WATCHERS - 1) * N_EVENTS


def keep_alive_once(ch: grpc.Channel, lease_id: int) -> rpc.LeaseKeepAliveResponse:
    return next(rpc_pb2_grpc.LeaseStub(ch).LeaseKeepAlive(
        iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=30))


def keyspace_watch_live(ch: grpc.Channel, pm: str) -> bool:
    """The proxy caches serializable reads only while its keyspace watch is established."""
    rpc_pb2_grpc.KVStub(ch).Range(rpc.RangeRequest(key=b"probe", serializable=True), timeout=30)
    return metric(pm, "etcd_grpc_proxy_cache_keys_total") > 0


def keepalive_is_cached(ch: grpc.Channel, pm: str, lease_id: int) -> bool:
    """Two keep-alives through the proxy: was the second answered without the cluster?"""
    keep_alive_once(ch, lease_id)
    sent = metric(pm, "datastore_grpc_proxy_keepalive_upstream_total")
    keep_alive_once(ch, lease_id)
    return metric(pm, "datastore_grpc_proxy_keepalive_upstream_total") == sent


def test_lease_revoked_elsewhere_is_never_reported_alive(tmp_path: Path, procs: list) -> None:
    """A keep-alive answered from the proxy's memory must not outlive a revoke it could see."""
    d, _ = ds_with_metrics(tmp_path, procs)
    proxy, pm = our_proxy(tmp_path, d.endpoint, procs)
    with grpc.insecure_channel(proxy.endpoint) as pch, grpc.insecure_channel(d.endpoint) as dch:
        pls, dls = rpc_pb2_grpc.LeaseStub(pch), rpc_pb2_grpc.LeaseStub(dch)
        pkv = rpc_pb2_grpc.KVStub(pch)
        held = pls.LeaseGrant(rpc.LeaseGrantRequest(TTL=600), timeout=30).ID  # TTL/6: 100 s
        bare = pls.LeaseGrant(rpc.LeaseGrantRequest(TTL=600), timeout=30).ID  # no keys
        wait_for(lambda: keyspace_watch_live(pch, pm), "the proxy's keyspace watch")
        pkv.Put(rpc.PutRequest(key=b"held", value=b"1", lease=held), timeout=30)

        def sread() -> bytes:
            r = pkv.Range(rpc.RangeRequest(key=b"held", serializable=True), timeout=30)
            return r.kvs[0].value if r.kvs else b""
        # the read is cached, and so is the keep-alive of the lease with a key
        wait_for(lambda: sread() == b"1" and metric(pm, "etcd_grpc_proxy_cache_keys_total") >= 1,
                 "the read to be cached")
        wait_for(lambda: keepalive_is_cached(pch, pm, held), "the held lease's keep-alive to be cached")
        # a lease without keys: its revoke would be invisible to the watch, so never cached
        assert not keepalive_is_cached(pch, pm, bare)
        hits = metric(pm, "etcd_grpc_proxy_cache_hits_total")
        assert sread() == b"1" and metric(pm, "etcd_grpc_proxy_cache_hits_total") == hits + 1

        dls.LeaseRevoke(rpc.LeaseRevokeRequest(ID=bare), timeout=30)  # behind the proxy's back
        assert keep_alive_once(pch, bare).TTL <= 0, "the bare lease reported alive after its revoke"

        dls.LeaseRevoke(rpc.LeaseRevokeRequest(ID=held), timeout=30)
        # once the proxy's watch has delivered the deletion (the cached read shows it), the
        # lease is dead through the proxy too, and stays so
        wait_for(lambda: sread() == b"", "the proxy's watch to see the revoke's deletion")
        for _ in range(3):
            assert keep_alive_once(pch, held).TTL <= 0, "the revoked lease reported alive"


def test_keepalive_and_range_cache_coalescing(tmp_path: Path, procs: list) -> None:
    d, _ = ds_with_metrics(tmp_path, procs)
    proxy, pm = our_proxy(tmp_path, d.endpoint, procs)
    with grpc.insecure_channel(proxy.endpoint) as ch:
        lease = rpc_pb2_grpc.LeaseStub(ch).LeaseGrant(rpc.LeaseGrantRequest(TTL=60), timeout=30)
        # only a lease with keys the proxy's watch has seen is answered from memory
        wait_for(lambda: keyspace_watch_live(ch, pm), "the proxy's keyspace watch")
        rpc_pb2_grpc.KVStub(ch).Put(rpc.PutRequest(key=b"held", lease=lease.ID), timeout=30)
        wait_for(lambda: keepalive_is_cached(ch, pm, lease.ID), "the proxy to see the lease's key")
    base_asked, base_sent = (metric(pm, "datastore_grpc_proxy_keepalive_requests_total"),
                             metric(pm, "datastore_grpc_proxy_keepalive_upstream_total"))

    async def keepalives(n_clients: int, rounds: int) -> list[int]:
        async with grpc.aio.insecure_channel(proxy.endpoint) as ch:
            stub = rpc_pb2_grpc.LeaseStub(ch)

            async def client() -> list[int]:
                ttls = []
                call = stub.LeaseKeepAlive()
                for _ in range(rounds):
                    await call.write(rpc.LeaseKeepAliveRequest(ID=lease.ID))
                    ttls.append((await call.read()).TTL)
                await call.done_writing()
                return ttls
            out = await asyncio.gather(*(client() for _ in range(n_clients)))
            return [t for ts in out for t in ts]

    ttls = asyncio.run(keepalives(20, 5))
    assert len(ttls) == 100 and all(50 <= t <= 60 for t in ttls)
    asked, sent = (metric(pm, "datastore_grpc_proxy_keepalive_requests_total") - base_asked,
                   metric(pm, "datastore_grpc_proxy_keepalive_upstream_total") - base_sent)
    print(f"keep-alives: {asked} from clients, {sent} sent to the cluster")
    assert asked == 100 and sent <= 5

    # serializable reads: served from the cache until a write (anywhere) invalidates it
    with grpc.insecure_channel(proxy.endpoint) as pch, grpc.insecure_channel(d.endpoint) as dch:
        pkv, dkv = rpc_pb2_grpc.KVStub(pch), rpc_pb2_grpc.KVStub(dch)
        pkv.Put(rpc.PutRequest(key=b"c", value=b"1"), timeout=30)

        def sread() -> bytes:
            r = pkv.Range(rpc.RangeRequest(key=b"c", serializable=True), timeout=30)
            return r.kvs[0].value if r.kvs else b""
        wait_for(lambda: sread() == b"1" and metric(pm, "etcd_grpc_proxy_cache_keys_total") == 1,
                 "the first serializable read to be cached")
        hits = metric(pm, "etcd_grpc_proxy_cache_hits_total")
        for _ in range(20):
            assert sread() == b"1"
        assert metric(pm, "etcd_grpc_proxy_cache_hits_total") == hits + 20
        dkv.Put(rpc.PutRequest(key=b"c", value=b"2"), timeout=30)  # behind the proxy's back
        wait_for(lambda: sread() == b"2", "the proxy's watch to invalidate the cached read")
        pkv.Put(rpc.PutRequest(key=b"c", value=b"3"), timeout=30)  # through the proxy: at once
        assert sread() == b"3"
        # a linearizable read is never cached
        assert pkv.Range(rpc.RangeRequest(key=b"c"), timeout=30).kvs[0].value == b"3"
    # the JSON gateway on --metrics-addr goes through the proxy too
    req = urllib.request.Request(pm + "/v3/kv/range", method="POST", data=b'{"key": "Yw=="}')
    with urllib.request.urlopen(req, timeout=30) as r:
        assert json.loads(r.read())["kvs"][0]["value"] == "Mw=="


def _etcdctl_basics(endpoint: str, tag: str) -> None:
    assert etcdctl(endpoint, "put", f"/{tag}/k", "v").stdout.strip() == b"OK"
    assert etcdctl(endpoint, "get", f"/{tag}/k").stdout.split() == [f"/{tag}/k".encode(), b"v"]
    assert etcdctl(endpoint, "get", f"/{tag}/k", "--prefix", "--consistency=s",
                   "--print-value-only").stdout.split() == [b"v"]
    lease = etcdctl(endpoint, "lease", "grant", "30").stdout.split()[1].decode()
    assert b"keepalived" in etcdctl(endpoint, "lease", "keep-alive", "--once", lease).stdout
    etcdctl(endpoint, "lease", "revoke", lease)
    assert etcdctl(endpoint, "member", "list").stdout.count(b"started") == 1
    # a watch from the revision of a put sees it (no race with the watch's registration)
    out = etcdctl(endpoint, "put", f"/{tag}/w", "x", "-w", "json").stdout
    rev = json.loads(out)["header"]["revision"]
    w = subprocess.Popen(["timeout", "60", ETCDCTL_BIN, f"--endpoints={endpoint}", "watch",
                          f"/{tag}/w", f"--rev={rev}"], stdout=subprocess.PIPE,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
                         start_new_session=True)  # killed as a group: timeout and etcdctl
    assert w.stdout is not None
    try:
        assert [w.stdout.readline().strip() for _ in range(3)] == [b"PUT", f"/{tag}/w".encode(), b"x"]
    finally:
        os.killpg(w.pid, signal.SIGKILL)  # w.kill() alone would orphan etcdctl
        w.wait()
    assert b"/" + tag.encode() in etcdctl(endpoint, "lock", f"/{tag}/lock", "echo",
                                          f"/{tag}/locked").stdout


def test_etcdctl_through_proxy_and_gateway(tmp_path: Path, procs: list) -> None:
    d, _ = ds_with_metrics(tmp_path, procs)
    refused = free_port()  # nothing listens here: both must pass over it
    proxy, _ = our_proxy(tmp_path, f"127.0.0.1:{refused},{d.endpoint}", procs)
    _etcdctl_basics(proxy.endpoint, "viaproxy")
    gw = our_gateway(tmp_path, f"127.0.0.1:{refused},{d.endpoint}", procs)
    for i in range(3):  # every connection lands on the live endpoint
        _etcdctl_basics(gw.endpoint, f"viagw{i}")


def test_our_proxy_in_front_of_real_etcd(tmp_path: Path, procs: list) -> None:
    e = etcd_proc(tmp_path, "etcdp")
    procs.append(e)
    e.start()
    proxy, _ = our_proxy(tmp_path, e.endpoint, procs)
    _etcdctl_basics(proxy.endpoint, "etcdproxy")
    assert etcdctl(proxy.endpoint, "get", "/etcdproxy/k", "--consistency=s").stdout.split()[1] == b"v"


def test_real_etcd_proxy_and_gateway_in_front_of_datastore(tmp_path: Path, procs: list) -> None:
    d, _ = ds_with_metrics(tmp_path, procs)
    pport, gport = free_port(), free_port()
    procs.append(Proc([ETCD_BIN, "grpc-proxy", "start", f"--endpoints={d.endpoint}",
                       f"--listen-addr=127.0.0.1:{pport}"], pport,
                      tmp_path / "etcd-grpc-proxy.log").wait_ready())
    _etcdctl_basics(f"127.0.0.1:{pport}", "etcdgrpcproxy")
    procs.append(Proc([ETCD_BIN, "gateway", "start", f"--endpoints={d.endpoint}",
                       f"--listen-addr=127.0.0.1:{gport}"], gport,
                      tmp_path / "etcd-gateway.log").wait_ready())
    _etcdctl_basics(f"127.0.0.1:{gport}", "etcdgateway")


def test_gateway_round_robin(tmp_path: Path, procs: list) -> None:
    """Two members behind the L4 gateway: connections alternate between them."""
    a, _ = ds_with_metrics(tmp_path, procs, "rr0")
    b, _ = ds_with_metrics(tmp_path, procs, "rr1")
    gw = our_gateway(tmp_path, f"{a.endpoint},{b.endpoint}", procs)
    seen = set()
    for _ in range(4):
        with grpc.insecure_channel(gw.endpoint) as ch:
            st = rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc.StatusRequest(), timeout=30)
            seen.add(st.header.member_id)
    assert len(seen) == 2
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10):
        pass  # a client that connects and leaves does not upset the gateway
    gw.wait_ready()


def test_late_joiners_see_every_event_after_their_created_revision(tmp_path: Path,
                                                                   procs: list) -> None:
    """Watchers join a shared watch while writes go on: each sees exactly the events after
    the revision of its ``created`` response, in order, with no gap."""
    d, dmetrics = ds_with_metrics(tmp_path, procs)
    proxy, _ = our_proxy(tmp_path, d.endpoint, procs, "--no-range-cache")
    n_writes, n_watchers = 60, 6

    async def run() -> list[tuple[int, list[int]]]:
        async with grpc.aio.insecure_channel(proxy.endpoint) as ch, \
                grpc.aio.insecure_channel(d.endpoint) as dch:
            kv = rpc_pb2_grpc.KVStub(dch)
            calls = []
            out: list[tuple[int, list[int]]] = []
            final = 0
            for i in range(n_writes):
                if i % (n_writes // n_watchers) == 0:  # a new watcher joins every 10 writes
                    call = rpc_pb2_grpc.WatchStub(ch).Watch(iter([rpc.WatchRequest(
                        create_request=rpc.WatchCreateRequest(key=b"j"))]))
                    created = await call.read()
                    assert created.created
                    calls.append((created.header.revision, call))
                final = (await kv.Put(rpc.PutRequest(key=b"j", value=b"%d" % i))).header.revision
            # the six cost the member one watcher, beside the proxy's own keyspace watch
            wait_for(lambda: metric(dmetrics, "etcd_debugging_mvcc_watcher_total") == 2,
                     "one shared upstream watch and the keyspace watch")
            for rev, call in calls:
                revs: list[int] = []
                while not revs or revs[-1] < final:
                    resp = await asyncio.wait_for(call.read(), 60)
                    revs.extend(ev.kv.mod_revision for ev in resp.events)
                call.cancel()
                out.append((rev, revs))
            return out

    results = asyncio.run(run())
    for created_rev, revs in results:
        assert revs == list(range(created_rev + 1, revs[-1] + 1)), (created_rev, revs[:5])
    # the last subscriber gone, the shared watch goes too; the keyspace watch stays
    wait_for(lambda: metric(dmetrics, "etcd_debugging_mvcc_watcher_total") == 1,
             "the shared upstream watch to close")


def test_range_stream_and_hashkv_through_the_proxy(tmp_path: Path, procs: list) -> None:
    # kube-apiserver lists with KV.RangeStream: through the proxy it gets the member's chunks
    d, _ = ds_with_metrics(tmp_path, procs)
    proxy, _ = our_proxy(tmp_path, d.endpoint, procs)
    kv = rpc_pb2_grpc.KVStub(d.channel())
    for i in range(120):
        kv.Put(rpc.PutRequest(key=b"rs/%03d" % i, value=b"v" * 2000))
    req = rpc.RangeRequest(key=b"rs/", range_end=b"rs0")

    def chunks(ch: grpc.Channel) -> list[list[bytes]]:
        return [[k.key for k in c.range_response.kvs]
                for c in rpc_pb2_grpc.KVStub(ch).RangeStream(req, timeout=30)]

    with grpc.insecure_channel(proxy.endpoint) as pch:
        via_proxy = chunks(pch)
        direct = chunks(d.channel())
        assert len(direct) > 1 and via_proxy == direct
        hkv = rpc.HashKVRequest()
        assert (rpc_pb2_grpc.MaintenanceStub(pch).HashKV(hkv, timeout=30).hash
                == rpc_pb2_grpc.MaintenanceStub(d.channel()).HashKV(hkv, timeout=30).hash)
