"""etcd's backend schema: bucket names, meta keys and how each value is encoded.

These are the names and encodings etcd 3.4-3.6 read from and write to their bbolt ``db``
file (server/storage/schema in 3.6). Where the datastore keeps the same data in RocksDB,
the key bucket and the lease bucket are byte-for-byte the same; the rest is translated by
``etcd_export`` and ``etcd_import``.
"""

from __future__ import annotations

import json

from datastore.api.internalpb.internal_pb2 import MemberRecord
from datastore.mvcc.revision import rev_to_bytes

KEY = b"key"  # revision (8-byte main, '_', 8-byte sub, 't' if a tombstone) -> mvccpb.KeyValue
META = b"meta"
LEASE = b"lease"  # lease id (8 bytes, big-endian) -> leasepb.Lease
ALARM = b"alarm"  # marshalled etcdserverpb.AlarmMember -> empty
CLUSTER = b"cluster"
MEMBERS = b"members"  # member id in hex -> the member as JSON
MEMBERS_REMOVED = b"members_removed"  # member id in hex -> "removed"
AUTH = b"auth"
AUTH_USERS = b"authUsers"  # user name -> authpb.User
AUTH_ROLES = b"authRoles"  # role name -> authpb.Role
ALL_BUCKETS = (KEY, META, LEASE, ALARM, CLUSTER, MEMBERS, MEMBERS_REMOVED, AUTH, AUTH_USERS,
               AUTH_ROLES)

# meta bucket
CONSISTENT_INDEX = b"consistent_index"  # 8 bytes big-endian: the last applied raft index
TERM = b"term"  # 8 bytes big-endian: its term (since 3.5)
CONF_STATE = b"confState"  # raftpb.ConfState as JSON (since 3.5)
SCHEDULED_COMPACT = b"scheduledCompactRev"  # a revision (17 bytes), main = compaction point
FINISHED_COMPACT = b"finishedCompactRev"
STORAGE_VERSION = b"storageVersion"  # "3.6.0" (3.6 only)
# cluster bucket
CLUSTER_VERSION = b"clusterVersion"  # "3.5.0"
# auth bucket
AUTH_ENABLED = b"authEnabled"  # b"\x01" or b"\x00"
AUTH_REVISION = b"authRevision"  # 8 bytes big-endian

REV_LEN = 17
TOMBSTONE_LEN = 18


def u64(v: int) -> bytes:
    return v.to_bytes(8, "big")


def compact_rev_bytes(main: int) -> bytes:
    return rev_to_bytes(main, 0)


def compact_rev_from(raw: bytes) -> int:
    if len(raw) < 8:
        raise ValueError(f"a compaction marker of {len(raw)} bytes (a revision is {REV_LEN})")
    return int.from_bytes(raw[:8], "big", signed=True)


def member_key(member_id: int) -> bytes:
    return f"{member_id:x}".encode()


def member_json(m: MemberRecord) -> bytes:
    """etcd's membership.Member as it marshals it (Go's field order, its omitempty)."""
    doc: dict[str, object] = {"id": m.ID, "peerURLs": list(m.peer_urls)}
    if m.is_learner:
        doc["isLearner"] = True
    if m.name:
        doc["name"] = m.name
    if m.client_urls:
        doc["clientURLs"] = list(m.client_urls)
    return json.dumps(doc, separators=(",", ":")).encode()


def conf_state_json(voters: list[int], learners: list[int]) -> bytes:
    doc: dict[str, object] = {}
    if voters:
        doc["voters"] = voters
    if learners:
        doc["learners"] = learners
    doc["auto_leave"] = False
    return json.dumps(doc, separators=(",", ":")).encode()
