"""Record client-observed operation histories for linearizability checking.

Clients call ``op_id = history.invoke(client, kind, key, args)`` just before sending a
request and ``history.complete(op_id, result)`` / ``history.fail(op_id, definite=...)``
once they know the outcome. Every method is non-blocking (one short lock), so the same
recorder can be shared by threads and by coroutines on an event loop.

Operation kinds and their ``args`` / ``result`` shapes (etcd-like KV):

========  ===================================  ==================================
kind      args                                 result
========  ===================================  ==================================
put       ``(value,)``                         ``revision`` (int)
get       ``()``                               ``(value or None, mod_revision)``
delete    ``()``                               ``deleted`` count (0 or 1)
cas       ``(expected_mod_revision, value)``   ``(succeeded, revision)``
========  ===================================  ==================================

A missing key reads as ``(None, 0)``; ``cas`` with expected revision 0 means "create
only if absent" (etcd's ``mod_revision == 0`` compare).

Failure semantics: ``fail(definite=True)`` means the request certainly did not take
effect (the server answered with a rejection) and the operation is ignored by the
checker. ``fail(definite=False)`` (timeout, connection reset, leader change mid-flight)
and operations never completed are *indeterminate*: they may have taken effect at any
point after invocation, so the checker treats their completion time as +infinity.
"""

from __future__ import annotations

import base64
import enum
import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

Kind = Literal["put", "get", "delete", "cas"]
Key = str | bytes
Value = str | bytes

KINDS: dict[str, int] = {"put": 1, "get": 0, "delete": 0, "cas": 2}  # kind -> len(args)


class Status(enum.StrEnum):
    PENDING = "pending"  # invoked, outcome not (yet) known; checked as indeterminate
    OK = "ok"
    INDETERMINATE = "indeterminate"
    FAILED = "failed"  # definitely not applied; ignored by the checker


@dataclass(frozen=True, slots=True)
class Event:
    """One history event in recording order (Jepsen style: invoke/ok/fail/info)."""

    type: Literal["invoke", "ok", "fail", "info"]
    op_id: int
    time_ns: int


@dataclass(slots=True)
class Operation:
    op_id: int
    client_id: str | int
    kind: Kind
    key: Key
    args: tuple[Any, ...]
    invoke_ns: int
    complete_ns: int | None = None  # when the client learnt the outcome; None if pending
    status: Status = Status.PENDING
    result: Any = None

    @property
    def is_indeterminate(self) -> bool:
        return self.status in (Status.PENDING, Status.INDETERMINATE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "client_id": self.client_id,
            "kind": self.kind,
            "key": _enc(self.key),
            "args": [_enc(a) for a in self.args],
            "invoke_ns": self.invoke_ns,
            "complete_ns": self.complete_ns,
            "status": self.status.value,
            "result": _enc(self.result),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Operation:
        kind = d["kind"]
        return cls(
            op_id=int(d["op_id"]),
            client_id=d["client_id"],
            kind=kind,
            key=_dec(d["key"]),
            args=tuple(_dec(a) for a in d["args"]),
            invoke_ns=int(d["invoke_ns"]),
            complete_ns=None if d["complete_ns"] is None else int(d["complete_ns"]),
            status=Status(d["status"]),
            result=normalize_result(kind, _dec(d["result"])),
        )


def normalize_result(kind: str, result: Any) -> Any:
    """Coerce a result to its canonical shape (tuples, ints) so comparisons are exact."""
    if result is None:
        return None
    if kind == "put" or kind == "delete":
        return int(result)
    if kind == "get":
        value, rev = result
        return (value, int(rev))
    if kind == "cas":
        ok, rev = result
        return (bool(ok), int(rev))
    raise ValueError(f"unknown operation kind {kind!r}")


class History:
    """Thread-safe, event-loop-safe recorder of invoke/complete events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[int, Operation] = {}
        self._events: list[Event] = []
        self._next_id = 0

    # -- recording ---------------------------------------------------------------------

    def invoke(self, client_id: str | int, kind: Kind, key: Key, args: Iterable[Any] = ()) -> int:
        args_t = tuple(args)
        if kind not in KINDS:
            raise ValueError(f"unknown operation kind {kind!r}")
        if len(args_t) != KINDS[kind]:
            raise ValueError(f"{kind} takes {KINDS[kind]} args, got {args_t!r}")
        with self._lock:
            # Timestamp under the lock so event order and timestamps never disagree.
            now = time.monotonic_ns()
            op_id = self._next_id
            self._next_id += 1
            self._ops[op_id] = Operation(op_id, client_id, kind, key, args_t, now)
            self._events.append(Event("invoke", op_id, now))
        return op_id

    def complete(self, op_id: int, result: Any) -> None:
        with self._lock:
            op = self._pending(op_id)
            op.result = normalize_result(op.kind, result)
            op.status = Status.OK
            op.complete_ns = now = time.monotonic_ns()
            self._events.append(Event("ok", op_id, now))

    def fail(self, op_id: int, definite: bool) -> None:
        with self._lock:
            op = self._pending(op_id)
            op.status = Status.FAILED if definite else Status.INDETERMINATE
            op.complete_ns = now = time.monotonic_ns()
            self._events.append(Event("fail" if definite else "info", op_id, now))

    @contextmanager
    def record(
        self,
        client_id: str | int,
        kind: Kind,
        key: Key,
        args: Iterable[Any] = (),
        definite_errors: tuple[type[BaseException], ...] = (),
    ) -> Iterator[_Recording]:
        """``with history.record(c, "put", k, (v,)) as r: r.ok(await client.put(k, v))``.

        Exceptions listed in ``definite_errors`` record a definite failure; any other
        exception, or leaving the block without calling ``ok``, records an indeterminate
        one (the safe default: we cannot know whether the server applied it).
        """
        rec = _Recording(self, self.invoke(client_id, kind, key, args))
        try:
            yield rec
        except definite_errors:
            if not rec.done:
                self.fail(rec.op_id, definite=True)
            raise
        except BaseException:
            if not rec.done:
                self.fail(rec.op_id, definite=False)
            raise
        if not rec.done:
            self.fail(rec.op_id, definite=False)

    def _pending(self, op_id: int) -> Operation:
        op = self._ops[op_id]
        if op.status is not Status.PENDING:
            raise ValueError(f"operation {op_id} already {op.status.value}")
        return op

    # -- access ------------------------------------------------------------------------

    def operations(self) -> list[Operation]:
        """Snapshot copies of all operations in invocation order."""
        with self._lock:
            return [replace(op) for op in self._ops.values()]

    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    @classmethod
    def from_operations(cls, ops: Iterable[Operation]) -> History:
        """Build a history from explicit operations (hand-written tests, loaded dumps)."""
        h = cls()
        for op in sorted(ops, key=lambda o: (o.invoke_ns, o.op_id)):
            h._ops[op.op_id] = replace(op)
        h._next_id = max(h._ops, default=-1) + 1
        evs = [Event("invoke", op.op_id, op.invoke_ns) for op in h._ops.values()]
        for op in h._ops.values():
            if op.complete_ns is not None and op.status is not Status.PENDING:
                t = {Status.OK: "ok", Status.FAILED: "fail"}.get(op.status, "info")
                evs.append(Event(t, op.op_id, op.complete_ns))  # type: ignore[arg-type]
        # Stable sort keeps invoke-before-completion for equal timestamps.
        h._events = sorted(evs, key=lambda e: e.time_ns)
        return h

    # -- persistence (failure artifacts) -----------------------------------------------

    def to_json(self) -> str:
        with self._lock:
            doc = {
                "format": "datastore-history/1",
                "operations": [op.to_dict() for op in self._ops.values()],
                "events": [[e.type, e.op_id, e.time_ns] for e in self._events],
            }
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> History:
        doc = json.loads(text)
        h = cls.from_operations(Operation.from_dict(d) for d in doc["operations"])
        if "events" in doc:  # keep the exact recorded interleaving when available
            h._events = [Event(t, int(i), int(ts)) for t, i, ts in doc["events"]]
        return h

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> History:
        return cls.from_json(Path(path).read_text())


@dataclass
class _Recording:
    history: History
    op_id: int
    done: bool = field(default=False)

    def ok(self, result: Any) -> None:
        self.history.complete(self.op_id, result)
        self.done = True

    def fail(self, definite: bool) -> None:
        self.history.fail(self.op_id, definite)
        self.done = True


# bytes are not JSON; tag them so keys/values round-trip with their exact type.
def _enc(x: Any) -> Any:
    if isinstance(x, bytes):
        return {"b64": base64.b64encode(x).decode("ascii")}
    if isinstance(x, tuple | list):
        return [_enc(i) for i in x]
    return x


def _dec(x: Any) -> Any:
    if isinstance(x, dict) and set(x) == {"b64"}:
        return base64.b64decode(x["b64"])
    if isinstance(x, list):
        return tuple(_dec(i) for i in x)
    return x
