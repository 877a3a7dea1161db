"""Shutdown ends within a bound whatever raft or the disk is doing, and loses nothing acknowledged.

A stalled disk (the faultfs shim blocks fsync while a flag file exists) is the case that
can hold a member forever; a second SIGTERM/SIGINT must end it at once, and one SIGTERM
within the bound. Three members stopped together during an election, a membership change
and a snapshot transfer must all exit, and restart with every acknowledged write.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from cluster_util import Cluster, wait_for
from e2e_util import target_is_etcd

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc as g
from datastore.cli import SHUTDOWN_BOUND_S
from datastore.testing.faultfs import FaultDisk, build_shim
from datastore.testing.procs import ServerProc, datastore_proc

pytestmark = pytest.mark.skipif(target_is_etcd(), reason="datastore's shutdown")

EXIT_WITHIN_S = SHUTDOWN_BOUND_S + 20  # the bound, plus start-up of a loaded machine's logging


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.getbasetemp() / "faultfs")


def _exit_code(p: ServerProc, within: float) -> int:
    assert p.popen is not None
    return p.popen.wait(within)  # raises TimeoutExpired if it hangs


def _put(p: ServerProc, key: bytes, timeout: float = 10) -> None:
    with grpc.insecure_channel(p.endpoint) as ch:
        g.KVStub(ch).Put(pb.PutRequest(key=key, value=b"v"), timeout=timeout)


def _stalled_member(tmp_path: Path, shim: Path) -> tuple[ServerProc, FaultDisk]:
    p = datastore_proc(tmp_path, "ds")
    disk = FaultDisk(p.data_dir, tmp_path / "durable", shim)
    p.env.update(disk.env())
    p.start()
    _put(p, b"acked")
    disk.stall_flag.touch()
    threading.Thread(target=lambda: _status_of(lambda: _put(p, b"stuck", 60)), daemon=True).start()
    wait_for(lambda: "stalling fsync" in p.log_tail(200), 30, "the disk to stall")
    return p, disk


def _status_of(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except grpc.RpcError:
        pass


def _restarted_has(tmp_path: Path, p: ServerProc, disk: FaultDisk, key: bytes) -> None:
    disk.stall_flag.unlink()
    q = datastore_proc(tmp_path, "ds", client_port=p.client_port, peer_port=p.peer_port).start()
    try:
        with grpc.insecure_channel(q.endpoint) as ch:
            assert g.KVStub(ch).Range(pb.RangeRequest(key=key), timeout=30).count == 1
    finally:
        q.stop()


def test_second_signal_exits_at_once(tmp_path: Path, shim: Path) -> None:
    p, disk = _stalled_member(tmp_path, shim)
    p.signal(signal.SIGTERM)
    wait_for(lambda: "shutting down" in p.log_tail(200), 30, "the shutdown to begin")
    t0 = time.monotonic()
    p.signal(signal.SIGINT)
    assert _exit_code(p, 5) == -signal.SIGINT
    assert time.monotonic() - t0 < SHUTDOWN_BOUND_S  # not the watchdog: the signal itself
    _restarted_has(tmp_path, p, disk, b"acked")


def test_one_signal_exits_within_the_bound(tmp_path: Path, shim: Path) -> None:
    p, disk = _stalled_member(tmp_path, shim)
    p.signal(signal.SIGTERM)
    assert _exit_code(p, EXIT_WITHIN_S) == 1
    assert "shutdown did not finish in time" in p.log_tail(50)
    _restarted_has(tmp_path, p, disk, b"acked")


def _writer(cl: Cluster, acked: list[bytes], stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        for p in cl.procs:
            n += 1
            key = f"k{n}".encode()
            try:
                _put(p, key, timeout=2)
                acked.append(key)
            except grpc.RpcError:
                pass


@pytest.mark.parametrize("during", ["election", "membership change", "snapshot transfer"])
def test_whole_cluster_stopped_at_once(during: str, tmp_path: Path) -> None:
    cl = Cluster(tmp_path, 3, extra=["--snapshot-count", "50",
                                     "--experimental-snapshot-catchup-entries", "10"])
    cl.start()
    acked: list[bytes] = []
    stop = threading.Event()
    w = threading.Thread(target=_writer, args=(cl, acked, stop), daemon=True)
    w.start()
    try:
        wait_for(lambda: len(acked) >= 100, 60, "writes to be acknowledged")
        stopping = list(cl.procs)
        leader = cl.leader()
        if during == "election":
            # the leader goes silent: the followers campaign while they shut down (and the
            # leader gets its SIGTERM when it runs again)
            leader.pause()
        else:
            new = cl.new_member("m3")
            with grpc.insecure_channel(leader.endpoint) as ch:
                g.ClusterStub(ch).MemberAdd(pb.MemberAddRequest(
                    peerURLs=[f"http://127.0.0.1:{new.peer_port}"]), timeout=30)
            if during == "snapshot transfer":
                new.launch()
                wait_for(lambda: "snapshot" in new.log_tail(200), 60, "a snapshot transfer")
                stopping.append(new)
        for p in stopping:
            p.signal(signal.SIGTERM)
        if during == "election":
            leader.resume()
        for p in stopping:
            _exit_code(p, EXIT_WITHIN_S)
    finally:
        stop.set()
        w.join(30)
        cl.stop()
    # every acknowledged write survives a restart of the three original members
    restarted = Cluster(tmp_path, 3)
    restarted.procs = [datastore_proc(tmp_path, p.name, extra=cl.extra, client_port=p.client_port,
                                      peer_port=p.peer_port, initial_cluster=_spec(cl))
                       for p in cl.procs]
    restarted.all_procs = list(restarted.procs)
    if during == "membership change":  # m3 was added but never started: quorum is 3 of 4
        restarted.procs.append(datastore_proc(tmp_path, "m3", extra=cl.extra,
                                              client_port=new.client_port, peer_port=new.peer_port,
                                              initial_cluster=_spec(cl) + f",m3=http://127.0.0.1:"
                                              f"{new.peer_port}", state="existing"))
        restarted.all_procs = list(restarted.procs)
    restarted.start()
    try:
        with grpc.insecure_channel(restarted.leader().endpoint) as ch:
            kv = g.KVStub(ch)
            missing = [k for k in acked if kv.Range(pb.RangeRequest(key=k), timeout=30).count != 1]
        assert not missing, f"{len(missing)} acknowledged writes lost"
    finally:
        restarted.stop()


def _spec(cl: Cluster) -> str:
    return ",".join(f"{p.name}=http://127.0.0.1:{p.peer_port}" for p in cl.procs)
