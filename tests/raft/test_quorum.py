"""Majority arithmetic against a naive model (etcd-io/raft quorum/quick_test.go)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from datastore.raft.quorum import INFINITE_INDEX, VoteResult, committed_index, vote_result

ids = st.sets(st.integers(1, 9), min_size=0, max_size=7)


def naive_committed(voters: set[int], match: dict[int, int]) -> int:
    """Largest i such that a majority has match >= i."""
    if not voters:
        return INFINITE_INDEX
    best = 0
    for cand in {0, *match.values()}:
        if sum(1 for v in voters if match.get(v, 0) >= cand) > len(voters) // 2:
            best = max(best, cand)
    return best


@settings(max_examples=800)
@given(ids, st.dictionaries(st.integers(1, 9), st.integers(0, 20)))
def test_committed_index_matches_naive(voters: set[int], match: dict[int, int]) -> None:
    assert committed_index(voters, match) == naive_committed(voters, match)


@settings(max_examples=800)
@given(ids, st.dictionaries(st.integers(1, 9), st.booleans()))
def test_vote_result_matches_naive(voters: set[int], votes: dict[int, bool]) -> None:
    q = len(voters) // 2 + 1
    yes = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    if not voters or yes >= q:
        want = VoteResult.VoteWon
    elif yes + missing >= q:
        want = VoteResult.VotePending
    else:
        want = VoteResult.VoteLost
    assert vote_result(voters, votes) == want


def test_committed_index_examples() -> None:
    assert committed_index({1, 2, 3}, {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index({1, 2, 3, 4}, {1: 5, 2: 3, 3: 1, 4: 2}) == 2
    assert committed_index({1}, {}) == 0
