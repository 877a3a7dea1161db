"""Linearizability checker for etcd-like KV histories recorded by :mod:`.history`.

Algorithm: Wing & Gong's search with Lowe's improvements as used by Porcupine -- a
doubly-linked list of call/return entries sorted by time, depth-first linearization of
minimal calls, and memoisation of ``(linearized-set bitset, model state)`` so each
configuration is explored once. Histories are partitioned per key (linearizability is
local/P-compositional), which keeps every search small.

Per-key model: a register holding ``(value, mod_revision, floor)`` where ``floor`` is the
largest write revision linearized so far on the key. Because etcd revisions are global,
a per-key model can only check that a key's write revisions increase in linearization
order and that reads return the ``mod_revision`` of the write they observe. A cheap
global pass adds what needs all keys: acknowledged write revisions are unique, they
respect real time (A completed before B was invoked => rev(A) < rev(B)), and a read's
mod_revision never names a write to another key.

Indeterminate operations (timed out / connection lost / never completed) may take
effect at any point after their invocation, or not at all; the search simply never
*requires* them. Indeterminate writes have unknown revisions; the model keeps
``mod_revision=None`` until a read or a successful CAS binds it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from datastore.testing.history import History, Key, Operation, Status

__all__ = ["Result", "check"]

GET, PUT, DELETE, CAS = 0, 1, 2, 3
_KIND = {"get": GET, "put": PUT, "delete": DELETE, "cas": CAS}

State = tuple[Any, int | None, int]  # (value or None, mod_revision or None=unknown, floor)
EMPTY: State = (None, 0, 0)


@dataclass
class Result:
    status: Literal["ok", "illegal", "unknown"]
    key: Key | None = None  # the failing (or undecided) key; None for global violations
    operations: list[Operation] = field(default_factory=list)  # illustrative subsequence
    explanation: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __str__(self) -> str:
        if self.ok:
            return "linearizable"
        return f"{self.status} (key={self.key!r}):\n{self.explanation}"


class _Budget:
    """Shared deadline and step allowance so a pathological history yields 'unknown'."""

    __slots__ = ("deadline", "steps_left")

    def __init__(self, timeout_s: float | None, max_steps: int | None) -> None:
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.steps_left = max_steps if max_steps is not None else 1 << 62

    def expired(self) -> bool:
        return self.steps_left <= 0 or (self.deadline is not None and time.monotonic() > self.deadline)


class _Unread:
    """Stands in for every written value no read in the partition returns.

    Only reads compare values, so such values are interchangeable; merging them makes
    memoised states collide far more often.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "<value never read>"


UNREAD = _Unread()


class _Op:
    """Compact operation for the hot loop; ``res`` is None when the outcome is unknown."""

    __slots__ = (
        "a1", "a2", "inv", "kind", "op", "prev_same", "required", "res", "ret", "val", "wrank"
    )  # fmt: skip

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.kind = _KIND[op.kind]
        self.a1 = op.args[0] if op.args else None
        self.a2 = op.args[1] if len(op.args) > 1 else None
        self.required = op.status is Status.OK
        self.res = op.result if self.required else None
        self.inv = op.invoke_ns
        self.ret = op.complete_ns if self.required else None
        # Per-search annotations, filled in by _prepare.
        self.val: Any = self.a1 if self.kind == PUT else self.a2
        self.wrank = -1
        self.prev_same = -1

    def relaxed(self) -> _Op:
        """The same op with its outcome forgotten (as if it had timed out)."""
        o = _Op(self.op)
        o.required, o.res, o.ret = False, None, None
        return o


def _step(s: State, o: _Op) -> State | None:
    """Apply ``o`` to state ``s``; None if the recorded outcome is impossible there.

    Returns ``s`` itself (identity) when the op leaves the state unchanged. Unknown
    outcomes are modelled only as "took effect": not taking effect is the same as
    leaving the optional op unlinearized, which the search already explores.
    """
    value, rev, floor = s
    k = o.kind
    res = o.res
    if k == GET:
        if res is None:  # a read whose outcome is forgotten observes nothing
            return s
        v, r = res
        if v != value:
            return None
        if rev is None:  # value from an indeterminate write: the read reveals its revision
            return (value, r, r) if r > floor else None
        return s if r == rev else None
    if k == PUT:
        if res is None:
            return (o.val, None, floor)
        return (o.val, res, res) if res > floor else None
    if k == DELETE:
        if res is not None and res != (value is not None):
            return None
        # floor stays a valid (strict) lower bound for later writes
        return s if value is None else (None, 0, floor)
    # CAS: mod_revision == expected; an unknown revision can only equal something > floor.
    e = o.a1
    matches = rev == e if rev is not None else e > floor
    if res is None:
        return (o.val, None, max(floor, e)) if matches else None
    ok, r = res
    if ok:
        if not matches:
            return None
        return (o.val, r, r) if r > max(floor, e) else None
    # Failed CAS: only refutable when the current revision is known (and equal).
    return None if rev is not None and rev == e else s


def _prepare(ops: list[_Op], canonical: bool = True) -> None:
    """Annotate ops with the facts the search's pruning rules rely on."""
    read = {o.res[0] for o in ops if o.kind == GET and o.res is not None}
    for o in ops:
        if o.kind in (PUT, CAS):
            v = o.a1 if o.kind == PUT else o.a2
            o.val = v if v in read or not canonical else UNREAD
    # Known write revisions on one key must be linearized in revision order (each must
    # exceed the floor the previous one set), so only the next-ranked one is eligible.
    known = [o for o in ops if o.required and o.kind in (PUT, CAS) and _wrev(o) is not None]
    known.sort(key=lambda o: _wrev(o) or 0)
    for o in ops:
        o.wrank = -1
    for rank, o in enumerate(known):
        o.wrank = rank
    # Indeterminate ops with the same effect are interchangeable once invoked: consume
    # them in invocation order so the memo sees one configuration, not every subset.
    last: dict[tuple[Any, ...], int] = {}
    for i in sorted(range(len(ops)), key=lambda i: ops[i].inv):
        o = ops[i]
        o.prev_same = -1
        if not o.required:
            cls = (o.kind, o.a1 if o.kind == CAS else None, o.val)
            o.prev_same = last.get(cls, -1)
            last[cls] = i


@dataclass
class _Deepest:
    depth: int = -1
    order: list[int] = field(default_factory=list)
    state: State = EMPTY
    blocker: int = -1
    candidates: list[int] = field(default_factory=list)


def _search(
    ops: list[_Op],
    init: State,
    budget: _Budget,
    diag: _Deepest | None = None,
    canonical: bool = True,
) -> tuple[Literal["ok", "illegal", "unknown"], int]:
    """Lowe/Porcupine search over one key's ops. Returns (verdict, steps).

    Besides the (linearized bitset, state) memo, two sound reductions keep high
    concurrency tractable:
    - an applicable, state-preserving required op (a read, a failed CAS, a delete of an
      absent key) is linearized immediately without branching: it can be moved to the
      front of any valid completion, since every pending return follows its call;
    - known-revision writes go in revision order, and optional ops that would not change
      the state are never linearized (dropping them is equivalent).
    """
    _prepare(ops, canonical)
    n = len(ops)
    evs: list[tuple[int, int, int]] = []
    for i, o in enumerate(ops):
        evs.append((o.inv, 0, i))
        if o.required:
            # Call-before-return at equal timestamps: treat ties as concurrent (lenient).
            evs.append((o.ret, 1, i))  # type: ignore[arg-type]
    evs.sort()
    m = len(evs)
    # Node 0 is the head sentinel; arrays beat node objects in CPython.
    nxt = [*range(1, m + 1), -1]
    prv = [-1, *range(m)]
    node_op = [-1] + [e[2] for e in evs]
    is_call = [False] + [e[1] == 0 for e in evs]
    ret_node = [-1] * n
    for idx in range(1, m + 1):
        if not is_call[idx]:
            ret_node[node_op[idx]] = idx
    remaining = sum(1 for o in ops if o.required)

    state = init
    lin = 0
    wk = 0  # number of known-revision writes linearized so far
    stack: list[tuple[int, State, bool]] = []  # (call node, state before, forced)
    seen: set[tuple[int, State]] = set()
    steps = 0
    NEW = -2  # marker: a fresh search node, look for a forced op first

    def lift(c: int, i: int) -> None:
        a, b = prv[c], nxt[c]
        nxt[a] = b
        if b != -1:
            prv[b] = a
        r = ret_node[i]
        if r != -1:
            a, b = prv[r], nxt[r]
            nxt[a] = b
            if b != -1:
                prv[b] = a

    def backtrack() -> int:
        """Undo frames up to the latest real choice; its successor, or -1 if none."""
        nonlocal state, lin, wk, remaining
        while stack:
            c, state, forced = stack.pop()
            i = node_op[c]
            o = ops[i]
            lin &= ~(1 << i)
            if o.required:
                remaining += 1
            if o.wrank >= 0:
                wk -= 1
            r = ret_node[i]  # unlift in reverse order
            if r != -1:
                nxt[prv[r]] = r
                if nxt[r] != -1:
                    prv[nxt[r]] = r
            nxt[prv[c]] = c
            if nxt[c] != -1:
                prv[nxt[c]] = c
            if not forced:
                return nxt[c]
        return -1

    entry = NEW
    while remaining:
        steps += 1
        if not steps & 1023:
            budget.steps_left -= 1024
            if budget.expired():
                return "unknown", steps
        if entry == NEW:
            entry = c = nxt[0]
            while is_call[c]:  # a return entry always exists while remaining > 0
                o = ops[node_op[c]]
                if o.required and _step(state, o) is state:
                    break
                c = nxt[c]
            else:
                continue
            i = node_op[c]
            key = (lin | (1 << i), state)
            if key in seen:  # explored (and failed) before
                entry = backtrack()
                if entry == -1:
                    break
                continue
            seen.add(key)
            stack.append((c, state, True))
            lin = key[0]
            remaining -= 1
            lift(c, i)
            entry = NEW
            continue
        if is_call[entry]:
            i = node_op[entry]
            o = ops[i]
            if (o.wrank >= 0 and o.wrank != wk) or (o.prev_same >= 0 and not (lin >> o.prev_same) & 1):
                entry = nxt[entry]
                continue
            ns = _step(state, o)
            if ns is not None and (o.required or ns != state):
                key = (lin | (1 << i), ns)
                if key not in seen:
                    seen.add(key)
                    stack.append((entry, state, False))
                    state, lin = ns, key[0]
                    if o.required:
                        remaining -= 1
                    if o.wrank >= 0:
                        wk += 1
                    lift(entry, i)
                    entry = NEW
                    continue
            entry = nxt[entry]
        else:
            # Reached the return of an unlinearized op: every ordering from here failed.
            if diag is not None and len(stack) > diag.depth:
                diag.depth = len(stack)
                diag.order = [node_op[c] for c, _, _ in stack]
                diag.state = state
                diag.blocker = node_op[entry]
                cands, c = [], nxt[0]
                while c != entry:
                    if is_call[c]:
                        cands.append(node_op[c])
                    c = nxt[c]
                diag.candidates = cands
            entry = backtrack()
            if entry == -1:
                break
    budget.steps_left -= steps & 1023
    return ("illegal" if remaining else "ok"), steps


# -- public entry point ----------------------------------------------------------------


def check(
    history: History | Iterable[Operation],
    *,
    timeout_s: float | None = 30.0,
    max_steps: int | None = None,
    minimize: bool = True,
    minimize_timeout_s: float = 5.0,
    initial: Mapping[Key, tuple[Any, int]] | None = None,
) -> Result:
    """Check a recorded history; ``initial`` maps key -> (value, mod_revision) at start.

    Keys absent from ``initial`` are assumed not to exist when the history begins.
    Returns "unknown" (never hangs) when the time or step budget runs out.
    """
    t0 = time.monotonic()
    ops = history.operations() if isinstance(history, History) else list(history)
    ops = [o for o in ops if o.status is not Status.FAILED]
    # Indeterminate reads carry no information and cannot change state.
    ops = [o for o in ops if not (o.kind == "get" and o.is_indeterminate)]
    base = min((o.invoke_ns for o in ops), default=0)
    fmt = _Fmt(base)
    budget = _Budget(timeout_s, max_steps)
    stats: dict[str, Any] = {"operations": len(ops)}

    bad = _global_check(ops, fmt)
    if bad is not None:
        bad.stats = stats | {"elapsed_s": time.monotonic() - t0}
        return bad

    by_key: dict[Key, list[Operation]] = defaultdict(list)
    for o in ops:
        by_key[o.key].append(o)
    stats["keys"] = len(by_key)
    total_steps = 0
    unknown: list[Key] = []
    for n_done, (key, kops) in enumerate(by_key.items()):
        if budget.expired():
            unknown += list(by_key)[n_done:]  # never reached: undecided too
            break
        init = _initial_state(initial, key)
        bad = _never_written(key, kops, init, fmt)
        if bad is None:
            small = [_Op(o) for o in kops]
            verdict, steps = _search(small, init, budget)
            total_steps += steps
            if verdict == "unknown":
                unknown.append(key)
                continue
            if verdict == "illegal":
                bad = _explain_key(key, small, init, fmt, minimize, minimize_timeout_s)
        if bad is not None:
            bad.stats = stats | {"steps": total_steps, "elapsed_s": time.monotonic() - t0}
            return bad
    stats |= {"steps": total_steps, "elapsed_s": time.monotonic() - t0}
    if unknown or (len(stats) and budget.expired()):
        checked = "budget exhausted"
        return Result(
            "unknown",
            unknown[0] if unknown else None,
            explanation=f"{checked}; undecided keys: {unknown!r}",
            stats=stats | {"unknown_keys": unknown},
        )
    return Result("ok", stats=stats)


def _initial_state(initial: Mapping[Key, tuple[Any, int]] | None, key: Key) -> State:
    if initial and key in initial:
        v, r = initial[key]
        return (v, r, r)
    return EMPTY


# -- cheap checks ----------------------------------------------------------------------


def _write_rev(o: Operation) -> int | None:
    """Revision created by an acknowledged write, if it reported one."""
    if o.status is not Status.OK:
        return None
    if o.kind == "put":
        return int(o.result)
    if o.kind == "cas" and o.result[0]:
        return int(o.result[1])
    return None


def _global_check(ops: list[Operation], fmt: _Fmt) -> Result | None:
    writes = [(r, o) for o in ops if (r := _write_rev(o)) is not None]
    by_rev: dict[int, Operation] = {}
    for r, o in writes:
        if r <= 0:
            return Result("illegal", o.key, [o], f"write returned non-positive revision:\n  {fmt.op(o)}")
        if r in by_rev:
            p = by_rev[r]
            return Result(
                "illegal",
                o.key,
                [p, o],
                f"two acknowledged writes returned the same revision {r}:\n  {fmt.op(p)}\n  {fmt.op(o)}",
            )
        by_rev[r] = o
    # Real-time order: sweep invocations, tracking the max revision already completed.
    by_done = sorted(writes, key=lambda w: w[1].complete_ns or 0)
    j, best_rev, best_op = 0, 0, None
    for r, o in sorted(writes, key=lambda w: w[1].invoke_ns):
        while j < len(by_done) and (by_done[j][1].complete_ns or 0) < o.invoke_ns:
            if by_done[j][0] > best_rev:
                best_rev, best_op = by_done[j]
            j += 1
        if best_op is not None and r <= best_rev:
            return Result(
                "illegal",
                o.key,
                [best_op, o],
                "revisions go backwards in real time: the first write completed before "
                f"the second was invoked, yet got a higher revision ({best_rev} >= {r}):\n"
                f"  {fmt.op(best_op)}\n  {fmt.op(o)}",
            )
    # A read's mod_revision must not name a write to a different key.
    for o in ops:
        if o.kind == "get" and o.status is Status.OK and o.result[0] is not None:
            w = by_rev.get(o.result[1])
            if w is not None and w.key != o.key:
                return Result(
                    "illegal",
                    o.key,
                    [w, o],
                    f"read's mod_revision {o.result[1]} belongs to a write of another key:\n"
                    f"  {fmt.op(w)}\n  {fmt.op(o)}",
                )
    return None


def _written_values(kops: Iterable[Operation]) -> set[Any]:
    vals: set[Any] = set()
    for o in kops:
        if o.status is Status.FAILED:
            continue
        if o.kind == "put":
            vals.add(o.args[0])
        elif o.kind == "cas" and not (o.status is Status.OK and not o.result[0]):
            vals.add(o.args[1])
    return vals


def _never_written(key: Key, kops: list[Operation], init: State, fmt: _Fmt) -> Result | None:
    vals = _written_values(kops) | {init[0], None}
    for o in kops:
        if o.kind == "get" and o.status is Status.OK and o.result[0] not in vals:
            return Result(
                "illegal",
                key,
                [o],
                f"key {key!r}: read returned a value that was never written by any "
                f"(possibly) successful operation:\n  {fmt.op(o)}",
            )
    return None


# -- failure explanation ---------------------------------------------------------------


def _explain_key(key: Key, ops: list[_Op], init: State, fmt: _Fmt, minimize: bool, budget_s: float) -> Result:
    core = _minimize(ops, init, budget_s) if minimize else ops
    core.sort(key=lambda o: o.inv)
    diag = _Deepest()
    _search(core, init, _Budget(budget_s, None), diag, canonical=False)  # real values
    lines = [
        f"key {key!r}: no linearization exists for these {len(core)} operations "
        f"(reduced from {len(ops)}; '?' = outcome unknown, may or may not have happened):"
    ]
    # Keep artifacts readable when reduction ran out of time: show the tail only.
    shown = core[-_MAX_LINES:]
    if len(core) > len(shown):
        lines.append(f"  ... {len(core) - len(shown)} earlier operations omitted ...")
    lines += [f"  {fmt.op(o.op, relaxed=not o.required and o.op.status is Status.OK)}" for o in shown]
    if diag.blocker >= 0:
        tail = diag.order[-_MAX_LINES:]
        order = ", ".join(f"#{core[i].op.op_id}" for i in tail) or "(nothing)"
        if len(diag.order) > len(tail):
            order = f"... {len(diag.order) - len(tail)} ops, " + order
        lines.append(f"Longest consistent prefix of a linearization: {order}")
        lines.append(f"  -> state then: {_fmt_state(diag.state)}")
        b = core[diag.blocker].op
        lines.append(
            f"#{b.op_id} returned at {fmt.t(b.complete_ns)} so it must take effect by "
            "then, but no pending operation can be linearized next:"
        )
        for i in diag.candidates:
            lines.append(f"  #{core[i].op.op_id}: {_why(diag.state, core[i])}")
    return Result("illegal", key, [o.op for o in core], "\n".join(lines))


_MAX_LINES = 40


def _why(s: State, o: _Op) -> str:
    value, rev, floor = s
    if _step(s, o) is not None:
        return "applicable, but every continuation after it fails"
    if o.kind == GET:
        return f"read {o.res!r} but the register holds {_fmt_state(s)}"
    if o.kind == PUT:
        return f"write revision {o.res} is not above the key's latest write revision {floor}"
    if o.kind == DELETE:
        return f"reported {o.res} deleted but the key is {'present' if value else 'absent'}"
    if o.res is not None and o.res[0] and (rev == o.a1 or rev is None):
        return f"new revision {o.res[1]} is not above {max(floor, o.a1)}"
    verb = "fail" if o.res is not None and not o.res[0] else "succeed"
    return f"compare mod_revision=={o.a1} cannot {verb} when the register holds {_fmt_state(s)}"


def _fmt_state(s: State) -> str:
    value, rev, floor = s
    if value is None:
        return f"<absent> (latest write revision {floor})"
    return f"value={value!r} mod_revision={'?' if rev is None else rev}"


def _illegal(ops: list[_Op], init: State, deadline: float) -> bool:
    b = _Budget(max(0.0, deadline - time.monotonic()), None)
    return _search(ops, init, b)[0] == "illegal"


def _minimize(ops: list[_Op], init: State, budget_s: float) -> list[_Op]:
    """Shrink an illegal key history to a small illegal core (best effort, time-boxed).

    1. Cut at the earliest completion time whose prefix is already illegal (prefixes of
       a linearizable history are linearizable, so this is a binary search).
    2. Forget outcomes (make ops indeterminate) in ddmin-style chunks while the history
       stays illegal. This only weakens constraints, so the core is a true violation.
    3. Delete indeterminate ops, but only where every op whose outcome still matters
       remains necessary: deletion is not a weakening (it can strand a read whose value
       came from the deleted write) and must not swap in a different, fake violation.
    """
    deadline = time.monotonic() + budget_s

    def illegal(cand: list[_Op]) -> bool:
        return _illegal(cand, init, deadline)

    def prefix(t: int) -> list[_Op]:
        # Ops still running at t have not reported yet: their outcomes are unknown.
        return [
            o if o.ret is not None and o.ret <= t else o.relaxed()
            for o in ops
            if o.inv <= t and not (o.kind == GET and (o.ret or t + 1) > t)
        ]

    cuts = sorted({o.ret for o in ops if o.ret is not None})
    lo, hi = 0, len(cuts) - 1
    while lo < hi and time.monotonic() < deadline:
        mid = (lo + hi) // 2
        if illegal(prefix(cuts[mid])):
            hi = mid
        else:
            lo = mid + 1
    cur = prefix(cuts[hi]) if cuts else list(ops)
    if not illegal(cur):  # budget ran out mid-way: fall back to all
        cur = list(ops)

    def relax(cand: list[_Op], idx: set[int]) -> list[_Op]:
        # A read with a forgotten outcome is a no-op, so drop it outright.
        out = [o.relaxed() if i in idx else o for i, o in enumerate(cand)]
        return [o for i, o in enumerate(out) if not (i in idx and o.kind == GET)]

    def still_needs_all(cand: list[_Op]) -> bool:
        req = [i for i, o in enumerate(cand) if o.required]
        if len(req) > 8 or not illegal(cand):
            return False
        return all(not illegal(relax(cand, {i})) for i in req)

    cur = _shrink(cur, lambda o: o.required, relax, illegal, deadline)
    cur = _shrink(
        cur,
        lambda o: not o.required,
        lambda c, idx: [o for i, o in enumerate(c) if i not in idx],
        still_needs_all,
        deadline,
    )
    return cur


def _shrink(
    cur: list[_Op],
    eligible: Callable[[_Op], bool],
    transform: Callable[[list[_Op], set[int]], list[_Op]],
    accept: Callable[[list[_Op]], bool],
    deadline: float,
) -> list[_Op]:
    """ddmin-style: apply ``transform`` to chunks of eligible ops while ``accept`` holds."""
    chunk = max(1, sum(map(eligible, cur)) // 2)
    while time.monotonic() < deadline:
        idxs = [i for i, o in enumerate(cur) if eligible(o)]
        shrunk = False
        for start in range(0, len(idxs), chunk):
            if time.monotonic() >= deadline:
                break
            cand = transform(cur, set(idxs[start : start + chunk]))
            if accept(cand):
                cur, shrunk = cand, True
                break  # indices shifted; rescan at the same chunk size
        if not shrunk:
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
    return cur


def _wrev(w: _Op) -> int | None:
    if w.res is None:
        return None
    return w.res if w.kind == PUT else (w.res[1] if w.res[0] else None)


class _Fmt:
    """Human-readable ops with times relative to the first invocation."""

    def __init__(self, base: int) -> None:
        self.base = base

    def t(self, ns: int | None) -> str:
        return "inf" if ns is None else f"{(ns - self.base) / 1e6:.3f}ms"

    def op(self, o: Operation, relaxed: bool = False) -> str:
        args = ", ".join(repr(a) for a in (o.key, *o.args))
        if o.status is Status.OK and not relaxed:
            out = repr(o.result)
        elif o.status is Status.OK:
            out = f"{o.result!r} (irrelevant)"
        else:
            out = f"? ({o.status.value})"
        end = self.t(o.complete_ns) if o.status is Status.OK else "inf"
        span = f"[{self.t(o.invoke_ns)}, {end}]"
        return f"#{o.op_id} client={o.client_id} {o.kind}({args}) -> {out}  {span}"
