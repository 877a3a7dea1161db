"""What the seams of ``Raft`` see of each other, for type checkers only.

``Raft`` (``core.py``) is composed from mixins, one per seam (``replication.py``,
``election.py``, ``leader.py``, ``follower.py``, ``read_index.py``, ``membership.py``).
Each mixin derives from ``RaftBase``, which declares the fields set in ``Raft.__init__``
and the methods one seam calls in another. At run time ``RaftBase`` is ``object``, so it
adds nothing to attribute lookups; a type checker checks every real method against the
declaration here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datastore.raft.log import RaftLog
    from datastore.raft.read_only import ReadOnly
    from datastore.raft.tracker import ProgressTracker
    from datastore.raft.types import ConfState, Entry, Message, ReadState, StateType

    class RaftBase:
        # Fields (meanings in Raft.__init__).
        id: int
        log: RaftLog
        trk: ProgressTracker
        max_msg_size: int
        term: int
        lead: int
        state: StateType
        is_learner: bool
        msgs: list[Message]
        read_states: list[ReadState]
        election_elapsed: int
        lead_transferee: int
        pending_conf_index: int
        read_only: ReadOnly
        pending_read_index: list[Message]

        # core.py
        def become_candidate(self) -> None: ...
        def become_follower(self, term: int, lead: int) -> None: ...
        def become_leader(self) -> None: ...
        def become_pre_candidate(self) -> None: ...
        def promotable(self) -> bool: ...

        # replication.py
        def append_entry(self, es: list[Entry]) -> None: ...
        def bcast_append(self) -> None: ...
        def bcast_heartbeat(self) -> None: ...
        def maybe_commit(self) -> bool: ...
        def maybe_send_append(self, to: int, send_if_empty: bool = True) -> bool: ...
        def send(self, m: Message) -> None: ...
        def send_heartbeat(self, to: int, ctx: bytes) -> None: ...

        # election.py
        def hup(self, campaign_type: bytes) -> None: ...

        # leader.py
        def abort_leader_transfer(self) -> None: ...
        def send_timeout_now(self, to: int) -> None: ...

        # follower.py
        def handle_append_entries(self, m: Message) -> None: ...
        def handle_heartbeat(self, m: Message) -> None: ...
        def handle_snapshot(self, m: Message) -> None: ...

        # read_index.py
        def committed_entry_in_current_term(self) -> bool: ...
        def on_commit_advanced(self) -> None: ...
        def respond_read_index(self, req: Message, index: int) -> None: ...
        def send_read_index_response(self, m: Message) -> None: ...

        # membership.py
        def _apply_conf_state(self, cs: ConfState) -> None: ...

else:
    RaftBase = object
