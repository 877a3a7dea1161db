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
