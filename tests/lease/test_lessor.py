"""The lessor with a fake clock: expiry only on the primary, checkpoints, renewals."""

from __future__ import annotations

from pathlib import Path

import pytest

from datastore import errors
from datastore.lease.lessor import Lessor
from datastore.storage.backend import Backend
from datastore.util.clock import FakeClock


@pytest.fixture
def lessor(tmp_path: Path) -> Lessor:
    return Lessor(Backend(tmp_path / "s"), FakeClock(), min_ttl=2)


def test_grant_applies_min_ttl_and_rejects_duplicates(lessor: Lessor) -> None:
    wb = lessor.backend.batch()
    assert lessor.grant(1, 1, wb).ttl == 2
    with pytest.raises(errors.ErrLeaseExist):
        lessor.grant(1, 10, wb)
    with pytest.raises(errors.ErrLeaseTTLTooLarge):
        lessor.grant(2, 9_000_000_001, wb)


def test_only_the_primary_expires_leases(lessor: Lessor) -> None:
    clock: FakeClock = lessor.clock  # type: ignore[assignment]
    lessor.grant(1, 5, lessor.backend.batch())
    clock.advance(100)
    assert lessor.expired() == []  # a follower never decides expiry
    lessor.promote()
    assert lessor.expired() == []
    clock.advance(4)
    assert lessor.renew(1) == 5
    clock.advance(4.9)
    assert lessor.expired() == []
    clock.advance(0.2)
    assert lessor.expired() == [1]
    with pytest.raises(errors.ErrLeaseNotFound):
        lessor.renew(1)  # expired: its revocation is on its way
    lessor.demote()
    assert lessor.expired() == []


def test_checkpoints_carry_remaining_ttl_across_restart(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "s")
    clock = FakeClock()
    le = Lessor(backend, clock)
    wb = backend.batch()
    le.grant(7, 30, wb)
    backend.write(wb, sync=False)
    le.promote()
    clock.advance(10)
    due = le.checkpoints_due()
    assert due == [(7, 20)]
    wb = backend.batch()
    le.checkpoint(7, 20, wb)
    backend.write(wb, sync=False)
    assert le.checkpoints_due() == []
    restarted = Lessor(backend, clock)
    restarted.restore()
    restarted.promote()
    assert restarted.lookup(7).remaining(clock.now()) == pytest.approx(20)  # type: ignore[union-attr]
    restarted.renew(7)
    assert restarted.checkpoints_due() == [(7, 0)]  # renewed: back to a full TTL


def test_revoke_returns_sorted_keys(lessor: Lessor) -> None:
    wb = lessor.backend.batch()
    lessor.grant(3, 10, wb)
    for k in (b"z", b"a", b"m"):
        lessor.attach(3, k)
    lessor.detach(3, b"m")
    assert lessor.revoke(3, wb) == [b"a", b"z"]
    with pytest.raises(errors.ErrLeaseNotFound):
        lessor.revoke(3, wb)


def test_store_moves_keys_between_leases_without_reading_old_values(tmp_path: Path) -> None:
    """The store asks the lessor for a key's old lease (it no longer reads the old
    value): after puts that move, keep and drop leases, and deletes, every lease holds
    exactly the live keys whose stored value names it."""
    from datastore.mvcc.kvstore import KVStore

    backend = Backend(tmp_path / "kv")
    lessor = Lessor(backend, FakeClock(), min_ttl=2)
    store = KVStore(backend, leases=lessor)
    wb = backend.batch()
    for lid in (1, 2):
        lessor.grant(lid, 10, wb)
    steps = [(b"a", 1), (b"b", 1), (b"a", 2), (b"c", 2), (b"b", 0), (b"c", 2), (b"a", 1),
             (b"d", 0), (b"d", 2)]
    for key, lid in steps:
        txn = store.write(wb)
        txn.put(key, b"v", lid)
        txn.end()
    txn = store.write(wb)
    txn.delete_range(b"c", None)
    txn.end()
    backend.write(wb, sync=False)
    store.flushed()
    live = {kv.key: kv.lease for kv in store.range(b"\x00", b"\xff").kvs}
    assert live == {b"a": 1, b"b": 0, b"d": 2}
    for lid in (1, 2):
        assert lessor.lookup(lid).keys == {k for k, v in live.items() if v == lid}  # type: ignore[union-attr]
    assert {k: lessor.lease_of(k) for k in live} == live
