"""Conversions between the consensus core's values and their ``raftpb`` wire/disk form."""

from __future__ import annotations

from datastore.api.raftpb import raft_pb2 as pb
from datastore.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    Snapshot,
    SnapshotMetadata,
)

# Enum members by value: indexing a tuple costs a fraction of calling the enum class,
# which shows on the follower's per-entry decode.
_ENTRY_TYPES = tuple(EntryType)
_MSG_TYPES = tuple(MsgType)
assert all(t.value == i for i, t in enumerate(_ENTRY_TYPES))
assert all(t.value == i for i, t in enumerate(_MSG_TYPES))


def entry_to_pb(e: Entry) -> pb.Entry:
    return pb.Entry(term=e.term, index=e.index, type=e.type, data=e.data)


def entry_from_pb(p: pb.Entry) -> Entry:
    return Entry(p.term, p.index, _ENTRY_TYPES[p.type], p.data)


def encode_entry(e: Entry) -> bytes:
    return entry_to_pb(e).SerializeToString()


def decode_entry(b: bytes) -> Entry:
    return entry_from_pb(pb.Entry.FromString(b))


def hard_state_to_pb(h: HardState) -> pb.HardState:
    return pb.HardState(term=h.term, vote=h.vote, commit=h.commit)


def hard_state_from_pb(p: pb.HardState) -> HardState:
    return HardState(p.term, p.vote, p.commit)


def conf_state_to_pb(c: ConfState) -> pb.ConfState:
    return pb.ConfState(voters=list(c.voters), learners=list(c.learners))


def conf_state_from_pb(p: pb.ConfState) -> ConfState:
    return ConfState(tuple(p.voters), tuple(p.learners))


def snapshot_to_pb(s: Snapshot) -> pb.Snapshot:
    m = s.metadata
    return pb.Snapshot(data=s.data, metadata=pb.SnapshotMetadata(
        conf_state=conf_state_to_pb(m.conf_state), index=m.index, term=m.term))


def snapshot_from_pb(p: pb.Snapshot) -> Snapshot:
    m = p.metadata
    return Snapshot(p.data, SnapshotMetadata(conf_state_from_pb(m.conf_state), m.index, m.term))


def conf_change_to_pb(c: ConfChange) -> pb.ConfChange:
    return pb.ConfChange(type=int(c.type), node_id=c.node_id, context=c.context, id=c.id)


def conf_change_from_pb(p: pb.ConfChange) -> ConfChange:
    return ConfChange(ConfChangeType(p.type), p.node_id, p.context, p.id)


def message_to_pb(m: Message) -> pb.Message:
    out = pb.Message(type=m.type, to=m.to, term=m.term, log_term=m.log_term,
                     index=m.index, commit=m.commit, reject=m.reject,
                     reject_hint=m.reject_hint, context=m.context)
    setattr(out, "from", m.frm)  # "from" is a Python keyword
    if m.entries:
        add = out.entries.add  # built in place: no pb.Entry copied into the list
        for e in m.entries:
            add(term=e.term, index=e.index, type=e.type, data=e.data)
    if m.snapshot is not None:
        out.snapshot.CopyFrom(snapshot_to_pb(m.snapshot))
    return out


def message_from_pb(p: pb.Message) -> Message:
    t = p.type
    ets = _ENTRY_TYPES
    return Message(
        type=_MSG_TYPES[t] if t < len(_MSG_TYPES) else MsgType(t), to=p.to,
        frm=getattr(p, "from"), term=p.term, log_term=p.log_term, index=p.index,
        entries=tuple([Entry(e.term, e.index, ets[e.type], e.data) for e in p.entries]),
        commit=p.commit,
        snapshot=snapshot_from_pb(p.snapshot) if p.HasField("snapshot") else None,
        reject=p.reject, reject_hint=p.reject_hint, context=p.context,
    )
