"""The lessor: which leases exist, which keys they hold, and when they expire.

It never deletes keys and never decides anything on its own clock while applying: grant,
revoke and checkpoint are applied from the log (deterministic on every member). Only the
*primary* lessor (on the leader) keeps real expiry times; ``expired()`` tells the server
which leases to revoke, and the server proposes those revocations through raft, as
etcd's lessor + EtcdServer do. Checkpoints carry the remaining TTL through the log so a
restart or a new leader does not hand every lease a fresh full TTL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from rocksdict import WriteBatch

from datastore import errors
from datastore.api.internalpb.internal_pb2 import LeaseRecord
from datastore.metrics.hist import Histogram, exponential_buckets
from datastore.storage.backend import Backend
from datastore.util.clock import Clock

MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL (seconds)
FOREVER = math.inf


def lease_key(lease_id: int) -> bytes:
    return lease_id.to_bytes(8, "big", signed=True)


@dataclass(slots=True)
class Lease:
    id: int
    ttl: int
    remaining_ttl: int = 0  # from the last checkpoint; 0 = none
    expiry: float = FOREVER
    keys: set[bytes] = field(default_factory=set)

    def remaining(self, now: float) -> float:
        return self.expiry - now if self.expiry != FOREVER else float(self.ttl)


class Lessor:
    def __init__(self, backend: Backend, clock: Clock, min_ttl: int = 2) -> None:
        self.backend = backend
        self.clock = clock
        self.min_ttl = min_ttl
        self.leases: dict[int, Lease] = {}
        # key -> its lease, for keys attached to one: lets a put learn the key's old lease
        # without reading the old value (etcd's lessor keeps the same itemMap)
        self._key_lease: dict[bytes, int] = {}
        self.primary = False
        self._handle = backend.handle("lease")
        # etcd's etcd_debugging_lease_* counters, and the granted TTLs (ttl_total)
        self.granted = self.revoked = self.renewed = 0
        self.granted_ttls = Histogram(exponential_buckets(1, 2, 24))

    @property
    def attached_keys(self) -> int:
        """Keys that carry a lease (the console shows it)."""
        return len(self._key_lease)

    # ---- restore / leadership ------------------------------------------------------
    def restore(self) -> None:
        for _, raw in self.backend.scan("lease", b""):
            rec = LeaseRecord.FromString(raw)
            self.leases[rec.ID] = Lease(rec.ID, rec.TTL, rec.remaining_TTL)

    def promote(self, extend: float = 0.0) -> None:
        """Become primary: start every lease's clock (from its checkpoint if it has one)."""
        self.primary = True
        now = self.clock.now()
        for le in self.leases.values():
            base = le.remaining_ttl if le.remaining_ttl > 0 else le.ttl
            le.expiry = now + base + extend

    def demote(self) -> None:
        self.primary = False
        for le in self.leases.values():
            le.expiry = FOREVER

    # ---- applied from the log ----------------------------------------------------------
    def grant(self, lease_id: int, ttl: int, batch: WriteBatch) -> Lease:
        if ttl > MAX_LEASE_TTL:
            raise errors.ErrLeaseTTLTooLarge()
        if lease_id in self.leases:
            raise errors.ErrLeaseExist()
        ttl = max(ttl, self.min_ttl)
        le = Lease(lease_id, ttl)
        if self.primary:
            le.expiry = self.clock.now() + ttl
        self.leases[lease_id] = le
        self._persist(le, batch)
        self.granted += 1
        self.granted_ttls.observe(ttl)
        return le

    def revoke(self, lease_id: int, batch: WriteBatch) -> list[bytes]:
        """Forget the lease; returns its keys (sorted) for the caller to delete."""
        le = self.leases.pop(lease_id, None)
        if le is None:
            raise errors.ErrLeaseNotFound()
        batch.delete(lease_key(lease_id), self._handle)
        self.revoked += 1
        return sorted(le.keys)

    def checkpoint(self, lease_id: int, remaining_ttl: int, batch: WriteBatch) -> None:
        le = self.leases.get(lease_id)
        if le is None:
            return
        le.remaining_ttl = remaining_ttl
        if self.primary:
            le.expiry = self.clock.now() + (remaining_ttl or le.ttl)
        self._persist(le, batch)

    def _persist(self, le: Lease, batch: WriteBatch) -> None:
        rec = LeaseRecord(ID=le.id, TTL=le.ttl, remaining_TTL=le.remaining_ttl)
        batch.put(lease_key(le.id), rec.SerializeToString(), self._handle)

    # ---- key attachment (called by the MVCC store while applying) ----------------------
    def attach(self, lease_id: int, key: bytes) -> None:
        le = self.leases.get(lease_id)
        if le is not None:
            le.keys.add(key)
            self._key_lease[key] = lease_id

    def detach(self, lease_id: int, key: bytes) -> None:
        if self._key_lease.get(key) == lease_id:
            del self._key_lease[key]
        le = self.leases.get(lease_id)
        if le is not None:
            le.keys.discard(key)

    def lease_of(self, key: bytes) -> int | None:
        """The lease ``key`` is attached to (0: none). Exact for every existing lease; a
        key whose lease is gone reports 0, and detaching from a lease that is gone does
        nothing either way."""
        return self._key_lease.get(key, 0)

    def attach_restored(self, items: Iterable[tuple[int, bytes]]) -> None:
        for lease_id, key in items:
            self.attach(lease_id, key)

    # ---- primary-only, not through the log ----------------------------------------------
    def lookup(self, lease_id: int) -> Lease | None:
        return self.leases.get(lease_id)

    def renew(self, lease_id: int) -> int:
        """Keep-alive on the primary: restart the lease's clock; returns its TTL."""
        le = self.leases.get(lease_id)
        if le is None:
            raise errors.ErrLeaseNotFound()
        now = self.clock.now()
        if le.expiry <= now:
            raise errors.ErrLeaseNotFound()  # expired: its revocation is on the way
        le.expiry = now + le.ttl
        self.renewed += 1
        return le.ttl

    def expired(self, limit: int = 1000) -> list[int]:
        if not self.primary:
            return []
        now = self.clock.now()
        out = [le.id for le in self.leases.values() if le.expiry <= now]
        return out[:limit]

    def checkpoints_due(self) -> list[tuple[int, int]]:
        """(id, remaining TTL) for leases whose clock has moved since their checkpoint."""
        if not self.primary:
            return []
        now = self.clock.now()
        out = []
        for le in self.leases.values():
            rem = max(1, math.ceil(le.expiry - now))
            target = rem if rem < le.ttl else 0  # 0: a full TTL remains (just renewed)
            if target != le.remaining_ttl:
                out.append((le.id, target))
        return out
