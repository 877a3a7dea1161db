"""Crash recovery: kill -9 the target mid-stream of writes, restart it on the same data dir.

Invariants after each restart:
  * every acknowledged put is present with its value, create/mod revision and version 1;
  * the revisions of all present keys (each key is written exactly once, nothing is
    deleted) are exactly 2..R, R being the store's current revision: no gaps, no
    duplicates, whether or not unacknowledged in-flight writes landed;
  * the next put gets revision R + 1.

DS_CRASH_SEED picks the seed (printed on failure) for kill timings and values.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass

import grpc
from conftest import ServerFactory
from e2e_util import Client

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.testing.procs import ServerProc

WRITERS = 4
SEED = int(os.environ.get("DS_CRASH_SEED", "20240607"))


@dataclass(frozen=True)
class Ack:
    key: bytes
    value: bytes
    revision: int


class Writers:
    """Concurrent clients putting unique keys until the server dies; records acks."""

    def __init__(self, proc: ServerProc, prefix: str, rng: random.Random) -> None:
        self.acks: list[Ack] = []
        self.errors: list[str] = []
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(proc, f"{prefix}/w{i}", rng.randbytes(8)),
                             daemon=True)
            for i in range(WRITERS)]
        for t in self.threads:
            t.start()

    def _run(self, proc: ServerProc, prefix: str, salt: bytes) -> None:
        with Client(proc) as c:
            j = 0
            while not self.stop.is_set():
                key = f"{prefix}/{j:07d}".encode()
                value = salt + j.to_bytes(4, "big") * (1 + j % 7)
                try:
                    resp = c.kv.Put(pb.PutRequest(key=key, value=value), timeout=10)
                except grpc.RpcError as e:
                    with self.cond:
                        self.errors.append(f"{key!r}: {e.code().name}")
                        self.cond.notify_all()
                    return
                with self.cond:
                    self.acks.append(Ack(key, value, resp.header.revision))
                    self.cond.notify_all()
                j += 1

    def wait_acks(self, n: int, timeout: float = 60.0) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.acks) >= n or self.errors, timeout)
        assert ok and not self.errors, f"writers failed before the kill: {self.errors[:3]}"

    def join(self) -> list[Ack]:
        self.stop.set()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "writer thread stuck after the server was killed"
        with self.cond:
            return list(self.acks)


def check_recovered(proc: ServerProc, acks: list[Ack], ctx: str) -> int:
    with Client(proc) as c:
        resp = c.kv.Range(pb.RangeRequest(key=b"\x00", range_end=b"\x00"), timeout=10)
        rev = resp.header.revision
        kvs = {kv.key: kv for kv in resp.kvs}
        for a in acks:
            kv = kvs.get(a.key)
            assert kv is not None, f"{ctx}: acknowledged {a} lost"
            assert (kv.value, kv.mod_revision, kv.create_revision, kv.version) == \
                (a.value, a.revision, a.revision, 1), f"{ctx}: {a} recovered as {kv}"
        revs = sorted(kv.mod_revision for kv in resp.kvs)
        assert revs == list(range(2, rev + 1)), (
            f"{ctx}: revisions of present keys are not exactly 2..{rev}: "
            f"missing {sorted(set(range(2, rev + 1)) - set(revs))[:10]}, "
            f"count {len(revs)}, max {revs[-1] if revs else None}")
        nxt = c.kv.Put(pb.PutRequest(key=f"{ctx}/next".encode(), value=b"n"), timeout=10)
        assert nxt.header.revision == rev + 1, f"{ctx}: next put got {nxt.header.revision}"
        return rev + 1


def test_kill9_recovery(server_factory: ServerFactory) -> None:
    rng = random.Random(SEED)
    proc = server_factory("target")
    all_acks: list[Ack] = []
    # kill very early, after a moderate stream, and after a longer one (randomised a bit)
    targets = [rng.randint(1, 10), rng.randint(100, 250), rng.randint(500, 900)]
    for rnd, n in enumerate(targets):
        ctx = f"seed={SEED} round={rnd} kill-after={n}"
        w = Writers(proc, f"r{rnd}", rng)
        w.wait_acks(n)
        proc.kill()
        acks = w.join()
        assert len(acks) >= n
        assert len({a.revision for a in acks}) == len(acks), f"{ctx}: duplicate revisions acked"
        all_acks.extend(acks)
        t0 = time.monotonic()
        proc.start()
        print(f"{ctx}: {len(acks)} acked, restart took {time.monotonic() - t0:.2f}s")
        check_recovered(proc, all_acks, ctx)
