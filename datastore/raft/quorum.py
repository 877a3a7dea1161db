"""Majority arithmetic, pure functions (etcd-io/raft ``quorum/majority.go``).

Kept free of any raft state so it can be checked exhaustively against a naive model
(tests/raft/test_quorum.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import IntEnum

# What an empty configuration commits: anything. Mirrors etcd's ``math.MaxUint64`` so a
# joint config's empty half never holds the other half back.
INFINITE_INDEX = (1 << 64) - 1


class VoteResult(IntEnum):
    VotePending = 1
    VoteLost = 2
    VoteWon = 3


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """The largest index acknowledged by a majority of ``voters`` (thesis §3.6.2).

    ``match`` maps a voter to its highest acknowledged index; missing voters count as 0.
    Sorting n values per call is fine: n is the cluster size, not the log length.
    """
    n = len(voters)
    if n == 0:
        return INFINITE_INDEX
    if n == 1:
        (v,) = voters
        return match.get(v, 0)
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    # The (n//2 + 1)-th largest value is held by a majority.
    return acked[n // 2]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """Won once a majority granted, lost once a majority is unreachable (thesis §3.4)."""
    n = len(voters)
    if n == 0:
        # An empty config wins every vote, as in etcd (needed for joint configs).
        return VoteResult.VoteWon
    granted = rejected = 0
    for v in voters:
        vote = votes.get(v)
        if vote is None:
            continue
        if vote:
            granted += 1
        else:
            rejected += 1
    q = n // 2 + 1
    if granted >= q:
        return VoteResult.VoteWon
    if n - rejected >= q:
        return VoteResult.VotePending
    return VoteResult.VoteLost
