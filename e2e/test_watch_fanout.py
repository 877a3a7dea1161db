"""Many watchers catching up from one old revision while writes continue.

200 watchers over 4 streams (prefixes of different widths, single keys, some with
prev_kv, some with a NOPUT or NODELETE filter) all start at revision 2 with more than
one catch-up window (1,000 revisions) of history behind them, while a writer keeps
committing transactions; one of those streams is not read until the writes are over.
A fifth stream's 300 watchers (on prefixes) start from "now" (synced at once) and are
not read while the writes go on either: their responses outgrow the stream's queue even
with merging, so they are parked and caught up from disk. Each watcher's
events must equal, exactly and in order, the history read back from the store for its
range: nothing missing, repeated or reordered.
Also passes against real etcd (DS_TARGET=etcd).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from e2e_util import Client, ServerFactory

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.mvccpb.kv_pb2 import Event, KeyValue

KEYS = [b"fan/%s/%02d" % (g, i) for g in (b"a", b"b", b"c") for i in range(8)]
KEYS += [b"fan/a0", b"fan0", b"other"]  # just outside some of the prefixes below
PREFIXES = [b"fan/", b"fan/a/", b"fan/b/", b"fan/c/0"]
STREAMS, PER_STREAM = 4, 50
LATE = 300  # watchers of the fifth stream (from "now"): more than its queue holds
OLD_TXNS, LIVE_TXNS = 1100, 150


def prefix_end(p: bytes) -> bytes:
    return p[:-1] + bytes([p[-1] + 1])


@dataclass
class Spec:
    wid: int
    key: bytes
    end: bytes  # b"" single key
    prev_kv: bool
    no_put: bool
    no_delete: bool
    got: list[Event] = field(default_factory=list)

    def wants(self, key: bytes, typ: int) -> bool:
        inside = key == self.key if not self.end else self.key <= key < self.end
        return inside and not ((self.no_put and typ == Event.PUT)
                               or (self.no_delete and typ == Event.DELETE))


def specs_for(stream: int, n: int = PER_STREAM, wide: bool = False) -> list[Spec]:
    """Watchers of one stream; ``wide``: all on prefixes (lots of bytes to send)."""
    out = []
    for j in range(n):
        i = stream * PER_STREAM + j
        if wide or i % 5 == 0:
            p = PREFIXES[(i // 5 if not wide else i) % len(PREFIXES)]
            key, end = p, prefix_end(p)
        else:
            key, end = KEYS[i % len(KEYS)], b""
        out.append(Spec(j + 1, key, end, prev_kv=i % 3 == 0, no_put=i % 7 == 0,
                        no_delete=i % 11 == 0 and i % 7 != 0))
    return out


class Writer:
    """Random one-to-three-op transactions of puts and deletes of live keys."""

    def __init__(self, c: Client, seed: int) -> None:
        self.c, self.rng = c, random.Random(seed)
        self.max_value = 200
        self.live: set[bytes] = set()
        self.log: list[tuple[int, list[tuple[bytes, int]]]] = []  # rev, (key, type) per op

    def txn(self, ops: list[tuple[bytes, int]]) -> None:
        req = pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=k, value=self.rng.randbytes(
                self.rng.randrange(1, self.max_value)))) if t == Event.PUT
            else pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k))
            for k, t in ops])
        rev = self.c.kv.Txn(req, timeout=30).header.revision
        self.log.append((rev, ops))
        for k, t in ops:
            (self.live.add if t == Event.PUT else self.live.discard)(k)

    def random_txn(self) -> None:
        keys = self.rng.sample(KEYS, self.rng.randrange(1, 4))
        self.txn([(k, Event.DELETE if k in self.live and self.rng.random() < 0.3 else Event.PUT)
                  for k in keys])


def expected_history(c: Client, log: list[tuple[int, list[tuple[bytes, int]]]]
                     ) -> list[tuple[int, Event]]:
    """Every event, with prev_kv attached, as the store reports each key at each revision."""

    def at(key: bytes, rev: int) -> KeyValue | None:
        kvs = c.kv.Range(pb.RangeRequest(key=key, revision=rev), timeout=30).kvs
        return kvs[0] if kvs else None

    reads = [(k, r) for r, ops in log for k, t in ops if t == Event.PUT]
    reads += [(k, r - 1) for r, ops in log for k, _ in ops]
    with ThreadPoolExecutor(4) as ex:
        got = dict(zip(reads, ex.map(lambda kr: at(*kr), reads), strict=True))
    out = []
    for rev, ops in log:
        for k, t in ops:
            kv = got[(k, rev)] if t == Event.PUT else KeyValue(key=k, mod_revision=rev)
            assert kv is not None and kv.mod_revision == rev, (k, rev, kv)
            ev = Event(type=t, kv=kv)  # type: ignore[arg-type]
            prev = got[(k, rev - 1)]
            if prev is not None:
                ev.prev_kv.CopyFrom(prev)
            out.append((rev, ev))
    return out


def test_many_watchers_catch_up_from_one_old_revision_exactly(
        server_factory: ServerFactory) -> None:
    proc = server_factory()
    with Client(proc) as c:
        w = Writer(c, seed=7)
        for _ in range(OLD_TXNS):
            w.random_txn()
        start_rev = 2  # the first write's revision: all of the history above
        assert w.log[0][0] == start_rev

        streams: list[tuple[list[Spec], Iterator[pb.WatchResponse], threading.Event]] = []
        starts: dict[int, int] = {}

        def open_stream(specs: list[Spec], start: int) -> Iterator[pb.WatchResponse]:
            done = threading.Event()

            def requests() -> Iterator[pb.WatchRequest]:
                for sp in specs:
                    yield pb.WatchRequest(create_request=pb.WatchCreateRequest(
                        key=sp.key, range_end=sp.end, start_revision=start,
                        prev_kv=sp.prev_kv, watch_id=sp.wid, filters=(
                            [pb.WatchCreateRequest.NOPUT] if sp.no_put else [])
                        + ([pb.WatchCreateRequest.NODELETE] if sp.no_delete else [])))
                done.wait()

            st = c.watch.Watch(requests(), timeout=120)
            streams.append((specs, st, done))
            for sp in specs:
                starts[id(sp)] = start
            return st

        late = open_stream(specs_for(STREAMS, LATE, wide=True), 0)
        for _ in range(LATE):  # created: synced from the current revision
            first = next(late)
            assert first.created and first.header.revision == w.log[-1][0], first
        for sp in streams[0][0]:
            starts[id(sp)] = first.header.revision + 1
        w.max_value = 4000  # live values are larger, so the unread streams fill up
        live = threading.Thread(target=lambda: [w.random_txn() for _ in range(LIVE_TXNS)])
        live.start()  # writes continue while the watchers are created and catch up
        for s in range(STREAMS):
            open_stream(specs_for(s), start_rev)

        errors: list[str] = []

        def read(specs: list[Spec], stream: Iterator[pb.WatchResponse]) -> None:
            by_id = {sp.wid: sp for sp in specs}
            try:
                for resp in stream:
                    if resp.canceled or (resp.events and resp.watch_id not in by_id):
                        errors.append(str(resp))
                    elif resp.events:
                        by_id[resp.watch_id].got.extend(resp.events)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                    errors.append(repr(e))

        readers = [threading.Thread(target=read, args=(sp, st), daemon=True)
                   for sp, st, _ in streams]
        unread = readers[:2]  # the late stream, and one of the streams from start_rev
        for t in readers[2:]:
            t.start()
        live.join()
        # a fence every watcher sees: all keys put, then all deleted
        w.txn([(k, Event.PUT) for k in KEYS])
        w.txn([(k, Event.DELETE) for k in KEYS])
        for t in unread:
            t.start()

        history = expected_history(c, w.log)
        want = {}
        for specs, _, _ in streams:
            for sp in specs:
                want[id(sp)] = [ev if sp.prev_kv else Event(type=ev.type, kv=ev.kv)
                                for rev, ev in history
                                if rev >= starts[id(sp)] and sp.wants(ev.kv.key, ev.type)]
        everyone = [sp for specs, _, _ in streams for sp in specs]
        deadline = time.monotonic() + 60  # on timeout, the comparison below says what is off
        while (any(len(sp.got) < len(want[id(sp)]) for sp in everyone) and not errors
               and time.monotonic() < deadline):
            time.sleep(0.05)  # poll interval of the condition above
        for _, st, done in streams:
            done.set()
            st.cancel()  # type: ignore[attr-defined]
        for t in readers:
            t.join(10)
        for sp in everyone:
            exp = want[id(sp)]
            assert exp, sp  # the fence gives every watcher something
            if sp.got != exp:
                first = next((i for i, (a, b) in enumerate(zip(sp.got, exp, strict=False))
                              if a != b),
                             min(len(sp.got), len(exp)))
                raise AssertionError(
                    f"watcher {sp.key!r}..{sp.end!r} prev_kv={sp.prev_kv} no_put={sp.no_put} "
                    f"no_delete={sp.no_delete}: got {len(sp.got)} events, want {len(exp)}; "
                    f"first difference at event {first}: got "
                    f"{[e.kv.mod_revision for e in sp.got[first:first + 3]]}, want "
                    f"{[e.kv.mod_revision for e in exp[first:first + 3]]}")
        assert not errors, errors
