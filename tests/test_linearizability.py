"""Tests for the history recorder and the linearizability checker."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datastore.testing.history import History, Operation, Status
from datastore.testing.linearizability import check

# -- helpers ---------------------------------------------------------------------------

_ids = iter(range(1 << 30))


def op(
    kind: str,
    key: str,
    args: tuple[Any, ...],
    inv: int,
    ret: int | None,
    result: Any = None,
    status: Status | None = None,
    client: int = 0,
) -> Operation:
    """Hand-built op with explicit times; ret=None means indeterminate."""
    st_ = status or (Status.OK if ret is not None else Status.INDETERMINATE)
    return Operation(next(_ids), client, kind, key, args, inv, ret, st_, result)  # type: ignore[arg-type]


def put(k: str, v: str, inv: int, ret: int | None, rev: int | None = None) -> Operation:
    return op("put", k, (v,), inv, ret, rev)


def get(k: str, inv: int, ret: int, v: str | None, rev: int) -> Operation:
    return op("get", k, (), inv, ret, (v, rev))


def delete(k: str, inv: int, ret: int | None, n: int | None = None) -> Operation:
    return op("delete", k, (), inv, ret, n)


def cas(
    k: str, exp: int, v: str, inv: int, ret: int | None, res: tuple[bool, int] | None = None
) -> Operation:
    return op("cas", k, (exp, v), inv, ret, res)


def simulate(
    rng: random.Random,
    n_ops: int,
    n_keys: int,
    n_clients: int,
    p_indeterminate: float = 0.05,
    p_failed: float = 0.02,
) -> list[Operation]:
    """A correct sequential etcd-like store observed by concurrent clients.

    Each client issues ops back to back; every op takes effect at a random instant
    inside its [invoke, complete] window, and results come from applying ops in that
    order to a model with a global revision counter -- so the history is linearizable
    by construction. Indeterminate ops randomly did or did not take effect.
    """
    keys = [f"k{i}" for i in range(n_keys)]
    plans: list[tuple[int, int, int, int]] = []  # (lin, inv, ret, client)
    clock = [0] * n_clients
    for i in range(n_ops):
        c = i % n_clients
        inv = clock[c] + rng.randint(1, 50)
        lin = inv + rng.randint(1, 200)
        ret = lin + rng.randint(1, 200)
        clock[c] = ret
        plans.append((lin, inv, ret, c))
    plans.sort()
    rev = 1
    store: dict[str, tuple[str, int]] = {}
    out: list[Operation] = []
    for i, (_lin, inv, ret, c) in enumerate(plans):
        key = rng.choice(keys)
        kind = rng.choices(["put", "get", "delete", "cas"], [4, 5, 1, 2])[0]
        value = f"v{i}"
        roll = rng.random()
        status = (
            Status.INDETERMINATE
            if roll < p_indeterminate
            else Status.FAILED
            if roll < p_indeterminate + p_failed
            else Status.OK
        )
        applied = status is Status.OK or (status is Status.INDETERMINATE and rng.random() < 0.5)
        cur = store.get(key)
        args: tuple[Any, ...] = ()
        result: Any = None
        if kind == "put":
            args = (value,)
            if applied:
                rev += 1
                store[key] = (value, rev)
            result = rev
        elif kind == "get":
            result = cur if cur else (None, 0)
        elif kind == "delete":
            result = 0
            if applied and cur:
                rev += 1
                del store[key]
                result = 1
        else:
            exp = (cur[1] if cur else 0) if rng.random() < 0.6 else rng.randint(0, rev)
            args = (exp, value)
            ok = (cur[1] if cur else 0) == exp
            if applied and ok:
                rev += 1
                store[key] = (value, rev)
            result = (ok, rev)
        out.append(
            Operation(
                i,
                c,
                kind,  # type: ignore[arg-type]
                key,
                args,
                inv * 1000,
                ret * 1000 if status is not Status.INDETERMINATE else None,
                status,
                result if status is Status.OK else None,
            )
        )
    out.sort(key=lambda o: o.invoke_ns)
    return out


# -- histories that must pass ----------------------------------------------------------


def test_empty_and_sequential() -> None:
    assert check([]).ok
    h = [
        put("a", "1", 0, 10, 2),
        get("a", 20, 30, "1", 2),
        cas("a", 2, "2", 40, 50, (True, 3)),
        cas("a", 2, "3", 60, 70, (False, 3)),
        delete("a", 80, 90, 1),
        get("a", 100, 110, None, 0),
        delete("a", 120, 130, 0),
        cas("a", 0, "4", 140, 150, (True, 5)),
    ]
    assert check(h).ok


def test_concurrent_overlaps_with_several_valid_orders() -> None:
    h = [
        put("a", "x", 0, 100, 2),
        put("a", "y", 10, 110, 3),
        # Concurrent with both writes: may see either, or nothing yet.
        get("a", 5, 105, None, 0),
        get("a", 20, 120, "x", 2),
        get("a", 30, 130, "y", 3),
        # After both completed only the later revision is visible.
        get("a", 200, 210, "y", 3),
    ]
    assert check(h).ok
    # Writes ordered the other way round by revision: x is the later one.
    h2 = [
        put("a", "x", 0, 100, 3),
        put("a", "y", 10, 110, 2),
        get("a", 50, 60, "y", 2),
        get("a", 200, 210, "x", 3),
    ]
    assert check(h2).ok


def test_indeterminate_ops_that_did_and_did_not_take_effect() -> None:
    h = [
        put("a", "1", 0, 10, 2),
        put("a", "lost", 20, None),  # timed out, never applied
        put("b", "won", 20, None),  # timed out, applied; the read reveals revision 4
        put("c", "c1", 25, 30, 3),
        get("a", 100, 110, "1", 2),
        get("b", 100, 110, "won", 4),
        cas("c", 3, "c2", 120, None),  # timed out, applied (seen below)
        delete("a", 130, None),  # timed out, applied
        get("c", 200, 210, "c2", 6),
        get("a", 200, 210, None, 0),
        op("put", "a", ("nope",), 300, 310, status=Status.FAILED),  # definitely rejected
        get("a", 400, 410, None, 0),
    ]
    assert check(h).ok


def test_indeterminate_write_may_take_effect_long_after_invocation() -> None:
    h = [
        put("a", "late", 0, None),
        get("a", 10, 20, None, 0),
        put("a", "p", 30, 40, 2),
        get("a", 50, 60, "p", 2),
        get("a", 1000, 1010, "late", 7),
    ]
    assert check(h).ok


# -- histories that must fail ----------------------------------------------------------


def test_stale_read_after_completed_write() -> None:
    h = [
        put("a", "old", 0, 10, 2),
        put("a", "new", 20, 30, 3),
        get("a", 40, 50, "old", 2),
    ]
    r = check(h)
    assert not r.ok and r.status == "illegal" and r.key == "a"
    assert {o.args for o in r.operations if o.kind == "put"} == {("old",), ("new",)}
    assert "no linearization" in r.explanation


def test_lost_acknowledged_write() -> None:
    h = [put("a", "1", 0, 10, 2), get("a", 20, 30, None, 0)]
    r = check(h)
    assert r.status == "illegal" and r.key == "a"


def test_read_of_value_never_written() -> None:
    h = [put("a", "1", 0, 10, 2), get("a", 20, 30, "ghost", 2)]
    r = check(h)
    assert r.status == "illegal" and "never written" in r.explanation
    assert [o.kind for o in r.operations] == ["get"]


def test_read_of_definitely_failed_write() -> None:
    h = [op("put", "a", ("x",), 0, 10, status=Status.FAILED), get("a", 20, 30, "x", 2)]
    assert check(h).status == "illegal"


def test_two_cas_succeed_on_same_expected_revision() -> None:
    h = [
        put("a", "0", 0, 10, 2),
        cas(
            "a",
            2,
            "x",
            20,
            40,
            (True, 3),
        ),
        cas("a", 2, "y", 25, 45, (True, 4)),
    ]
    r = check(h)
    assert r.status == "illegal" and r.key == "a"
    assert sum(o.kind == "cas" for o in r.operations) == 2


def test_wrong_mod_revision_on_read() -> None:
    h = [put("a", "1", 0, 10, 2), get("a", 20, 30, "1", 3)]
    assert check(h).status == "illegal"


def test_nonmonotonic_revisions_in_real_time() -> None:
    # Different keys: only the global check can see it.
    h = [put("a", "1", 0, 10, 5), put("b", "1", 20, 30, 4)]
    r = check(h)
    assert r.status == "illegal" and "backwards" in r.explanation
    # Overlapping writes may receive revisions in either order.
    assert check([put("a", "1", 0, 30, 5), put("b", "1", 20, 40, 4)]).ok


def test_duplicate_revisions() -> None:
    h = [put("a", "1", 0, 10, 5), put("b", "1", 0, 10, 5)]
    assert "same revision" in check(h).explanation


def test_read_revision_names_other_keys_write() -> None:
    h = [put("a", "1", 0, 10, 2), put("b", "1", 0, 10, 3), get("a", 20, 30, "1", 3)]
    assert check(h).status == "illegal"


def test_step_budget_returns_unknown() -> None:
    rng = random.Random(7)
    ops = simulate(rng, 400, 1, 40, p_indeterminate=0.2)
    r = check(ops, max_steps=100)
    assert r.status == "unknown" and not r.ok


# -- recorder --------------------------------------------------------------------------


def test_history_threads_asyncio_and_json_roundtrip(tmp_path: Any) -> None:
    h = History()

    def worker(c: int) -> None:
        for i in range(50):
            oid = h.invoke(c, "put", b"k\x00", (f"{c}-{i}".encode(),))
            h.complete(oid, 1 + c * 100 + i)

    ts = [threading.Thread(target=worker, args=(c,)) for c in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()

    async def client() -> None:
        with h.record("aio", "get", b"k\x00") as rec:
            await asyncio.sleep(0)
            rec.ok([b"v", 7])
        with pytest.raises(TimeoutError), h.record("aio", "delete", b"k\x00"):
            raise TimeoutError
        with (
            pytest.raises(PermissionError),
            h.record("aio", "cas", "z", (0, "v"), definite_errors=(PermissionError,)),
        ):
            raise PermissionError

    asyncio.run(client())
    ops = h.operations()
    assert len(ops) == 203 and len(h.events()) == 406
    assert [o.status for o in ops[-3:]] == [Status.OK, Status.INDETERMINATE, Status.FAILED]
    assert ops[-3].result == (b"v", 7)
    times = [e.time_ns for e in h.events()]
    assert times == sorted(times)
    with pytest.raises(ValueError):
        h.complete(0, 1)
    with pytest.raises(ValueError):
        h.invoke(0, "put", "k", ())

    path = tmp_path / "history.json"
    h.dump(path)
    h2 = History.load(path)
    assert h2.operations() == ops and h2.events() == h.events()
    assert History.from_json(History.from_operations(ops).to_json()).operations() == ops


# -- properties and performance --------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n_ops=st.integers(1, 120),
    n_keys=st.integers(1, 4),
    n_clients=st.integers(1, 8),
    p_ind=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_simulated_histories_pass_and_mutated_reads_fail(
    seed: int, n_ops: int, n_keys: int, n_clients: int, p_ind: float
) -> None:
    rng = random.Random(seed)
    ops = simulate(rng, n_ops, n_keys, n_clients, p_indeterminate=p_ind)
    r = check(ops, timeout_s=10)
    assert r.ok, str(r)
    reads = [o for o in ops if o.kind == "get" and o.status is Status.OK]
    if reads:
        victim = rng.choice(reads)
        victim.result = ("never-written", victim.result[1])
        assert check(ops, timeout_s=10).status == "illegal"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n_clients=st.integers(2, 6))
def test_stale_read_mutation_is_caught_and_reduced(seed: int, n_clients: int) -> None:
    """Turn a read into one returning the value before a write that finished earlier."""
    rng = random.Random(seed)
    ops = simulate(rng, 80, 2, n_clients, p_indeterminate=0.0, p_failed=0.0)
    puts = [o for o in ops if o.kind == "put" and o.status is Status.OK]
    for g in ops:
        if g.kind != "get" or g.result[0] is None:
            continue
        older = [p for p in puts if p.key == g.key and p.result < g.result[1]]
        if older:
            # Stale only if the read began after its real value was acknowledged.
            src = next((p for p in puts if p.result == g.result[1]), None)
            if src is not None and src.complete_ns is not None and src.complete_ns < g.invoke_ns:
                g.result = (older[-1].args[0], older[-1].result)
                r = check(ops, minimize_timeout_s=2)
                assert r.status == "illegal", str(r)
                assert len(r.operations) <= 10, str(r)
                return


def _ref_step(s: tuple[Any, Any, int], o: Operation) -> tuple[Any, Any, int] | None:
    """The register model written out plainly: (value, mod_revision or None, floor)."""
    value, rev, floor = s
    res = o.result if o.status is Status.OK else None
    if o.kind == "get":
        if res[0] != value:
            return None
        if rev is None:
            return (value, res[1], res[1]) if res[1] > floor else None
        return s if res[1] == rev else None
    if o.kind == "put":
        if res is None:
            return (o.args[0], None, floor)
        return (o.args[0], res, res) if res > floor else None
    if o.kind == "delete":
        present = value is not None
        return None if res is not None and res != present else (None, 0, floor)
    exp, new = o.args
    matches = rev == exp if rev is not None else exp > floor
    if res is None:
        return (new, None, max(floor, exp)) if matches else None
    if res[0]:
        return (new, res[1], res[1]) if matches and res[1] > max(floor, exp) else None
    return None if rev is not None and rev == exp else s


def _reference_linearizable(ops: list[Operation]) -> bool:
    """Exhaustive search over every order and every subset of indeterminate ops."""
    live = [o for o in ops if o.status is Status.OK or (o.kind != "get" and o.is_indeterminate)]

    def ret(o: Operation) -> float:
        return o.complete_ns if o.status is Status.OK else float("inf")  # type: ignore[return-value]

    def go(rest: list[Operation], s: tuple[Any, Any, int]) -> bool:
        if all(o.status is not Status.OK for o in rest):
            return True
        for x in rest:
            if any(ret(y) < x.invoke_ns for y in rest if y is not x):
                continue  # some pending op finished before x began
            ns = _ref_step(s, x)
            if ns is not None and go([y for y in rest if y is not x], ns):
                return True
        return False

    return go(live, (None, 0, 0))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n_ops=st.integers(1, 7),
    n_clients=st.integers(1, 4),
    p_ind=st.sampled_from([0.0, 0.2, 0.5]),
    n_mutations=st.integers(0, 2),
)
def test_checker_agrees_with_brute_force(
    seed: int, n_ops: int, n_clients: int, p_ind: float, n_mutations: int
) -> None:
    """Pruning rules (forced reads, revision order, symmetry) must not change verdicts."""
    rng = random.Random(seed)
    ops = simulate(rng, n_ops, 1, n_clients, p_indeterminate=p_ind, p_failed=0.1)
    values = [o.args[-1] for o in ops if o.kind in ("put", "cas")] + [None]
    top = 3 + n_ops
    for _ in range(n_mutations):
        o = rng.choice(ops)
        if o.status is not Status.OK:
            continue
        if o.kind == "get":
            v = rng.choice(values)
            o.result = (v, 0 if v is None else rng.randint(1, top))
        elif o.kind == "put":
            o.result = rng.randint(1, top)
        elif o.kind == "delete":
            o.result = 1 - o.result
        else:
            o.result = (rng.random() < 0.5, rng.randint(1, top))
    expected = _reference_linearizable(ops)
    got = check(ops, timeout_s=10)
    assert got.status != "unknown"
    assert got.ok == expected, (expected, str(got), ops)


def test_performance_10k_ops_50_keys() -> None:
    ops = simulate(random.Random(1), 10_000, 50, 16, p_indeterminate=0.03)
    t = time.perf_counter()
    r = check(ops, timeout_s=30)
    elapsed = time.perf_counter() - t
    assert r.ok, str(r)
    assert elapsed < 10, elapsed
