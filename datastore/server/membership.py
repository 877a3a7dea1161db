"""Cluster membership: member records, ids derived from peer URLs, persisted in ``members``."""

from __future__ import annotations

import hashlib

from rocksdict import WriteBatch

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.internalpb.internal_pb2 import MemberRecord
from datastore.storage.backend import Backend

META_CLUSTER_ID = b"cluster_id"
META_LOCAL_ID = b"local_member_id"


def compute_member_id(peer_urls: list[str], token: str) -> int:
    """Like etcd: a hash of the sorted peer URLs and the cluster token (never 0)."""
    h = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode()).digest()
    return int.from_bytes(h[:8], "big") or 1


def compute_cluster_id(member_ids: list[int]) -> int:
    b = b"".join(m.to_bytes(8, "big") for m in sorted(member_ids))
    return int.from_bytes(hashlib.sha1(b).digest()[:8], "big") or 1


class Membership:
    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self._handle = backend.handle("members")
        self._meta = backend.handle("meta")
        self.members: dict[int, MemberRecord] = {}
        for _, raw in backend.scan("members", b""):
            m = MemberRecord.FromString(raw)
            self.members[m.ID] = m
        raw = backend.get("meta", META_CLUSTER_ID)
        self.cluster_id = int.from_bytes(raw, "big") if raw else 0
        raw = backend.get("meta", META_LOCAL_ID)
        self.local_id = int.from_bytes(raw, "big") if raw else 0

    @property
    def bootstrapped(self) -> bool:
        return bool(self.local_id)

    def bootstrap(self, local_id: int, cluster_id: int, members: list[MemberRecord]) -> None:
        wb = self.b.batch()
        for m in members:
            self.put(m, wb)
        self.cluster_id, self.local_id = cluster_id, local_id
        wb.put(META_CLUSTER_ID, cluster_id.to_bytes(8, "big"), self._meta)
        wb.put(META_LOCAL_ID, local_id.to_bytes(8, "big"), self._meta)
        self.b.write(wb, sync=True)

    def put(self, m: MemberRecord, wb: WriteBatch) -> None:
        self.members[m.ID] = m
        wb.put(m.ID.to_bytes(8, "big"), m.SerializeToString(), self._handle)

    def remove(self, member_id: int, wb: WriteBatch) -> None:
        self.members.pop(member_id, None)
        wb.delete(member_id.to_bytes(8, "big"), self._handle)

    def to_pb(self) -> list[rpc.Member]:
        return [rpc.Member(ID=m.ID, name=m.name, peerURLs=list(m.peer_urls),
                           clientURLs=list(m.client_urls), isLearner=m.is_learner)
                for m in sorted(self.members.values(), key=lambda m: m.ID)]
