"""Values that flow in and out of the consensus core.

Plain frozen dataclasses: the core never sees protobuf, sockets or disks. The driver
(``datastore.server.node``) converts them to ``raftpb`` for the wire and the disk.
Names follow etcd-io/raft so transcripts and scenarios read the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

NONE = 0  # "no node": no leader known, no vote cast


class MsgType(IntEnum):
    MsgHup = 0
    MsgBeat = 1
    MsgProp = 2
    MsgApp = 3
    MsgAppResp = 4
    MsgVote = 5
    MsgVoteResp = 6
    MsgSnap = 7
    MsgHeartbeat = 8
    MsgHeartbeatResp = 9
    MsgUnreachable = 10
    MsgSnapStatus = 11
    MsgCheckQuorum = 12
    MsgTransferLeader = 13
    MsgTimeoutNow = 14
    MsgReadIndex = 15
    MsgReadIndexResp = 16
    MsgPreVote = 17
    MsgPreVoteResp = 18


class EntryType(IntEnum):
    EntryNormal = 0
    EntryConfChange = 1


class ConfChangeType(IntEnum):
    ConfChangeAddNode = 0
    ConfChangeRemoveNode = 1
    ConfChangeUpdateNode = 2
    ConfChangeAddLearnerNode = 3


class StateType(IntEnum):
    StateFollower = 0
    StateCandidate = 1
    StateLeader = 2
    StatePreCandidate = 3


@dataclass(frozen=True, slots=True)
class Entry:
    term: int = 0
    index: int = 0
    type: EntryType = EntryType.EntryNormal
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """Persisted before any message that depends on it is sent."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    conf_state: ConfState = field(default_factory=ConfState)
    index: int = 0
    term: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    data: bytes = b""
    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)

    @property
    def is_empty(self) -> bool:
        return self.metadata.index == 0


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType = ConfChangeType.ConfChangeAddNode
    node_id: int = 0
    context: bytes = b""
    id: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    type: MsgType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile; never persisted. Reported in Ready when it changes."""

    lead: int = NONE
    raft_state: StateType = StateType.StateFollower


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches ``index``."""

    index: int
    request_ctx: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """Work the driver must do, in this order, before calling ``RawNode.advance(rd)``:

    1. persist ``snapshot`` (if any), ``entries`` and ``hard_state`` (fsync if ``must_sync``);
    2. send ``messages`` (only after step 1: etcd-io/raft doc.go);
    3. apply ``committed_entries`` (and ``snapshot``) to the state machine;
    4. hand ``read_states`` to waiting readers.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    must_sync: bool = False


class RaftError(Exception):
    """Base class for errors raised by the consensus core."""


class ProposalDropped(RaftError):
    """The proposal cannot be accepted now (no leader, leader transfer in progress, ...)."""


class StepLocalMsg(RaftError):
    """A local-only message type arrived through ``step``."""


class StepPeerNotFound(RaftError):
    """A response came from a node that is not in the configuration."""


class CompactedError(RaftError):
    """The requested index is older than the storage's first index."""


class UnavailableError(RaftError):
    """The requested index is newer than the storage's last index."""


class SnapshotTemporarilyUnavailable(RaftError):
    """Storage cannot produce a snapshot right now; try again later."""


class SnapOutOfDateError(RaftError):
    """The requested snapshot is older than the one the storage already holds."""


class ProgressStateType(IntEnum):
    """How the leader currently replicates to one follower (etcd-io/raft tracker/state.go)."""

    StateProbe = 0
    StateReplicate = 1
    StateSnapshot = 2


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    """The leader's view of one peer, as reported by ``RawNode.status()``."""

    match: int
    next: int
    state: ProgressStateType
    recent_active: bool
    is_learner: bool
    pending_snapshot: int = 0
    inflight: int = 0


@dataclass(frozen=True, slots=True)
class Status:
    """A point-in-time copy of a node's raft state; ``progress`` is filled only on a leader."""

    id: int
    hard_state: HardState
    soft_state: SoftState
    applied: int
    lead_transferee: int = NONE
    progress: dict[int, ProgressStatus] = field(default_factory=dict)

    @property
    def lead(self) -> int:
        return self.soft_state.lead

    @property
    def raft_state(self) -> StateType:
        return self.soft_state.raft_state
