"""Randomized whole-cluster simulation; every failure message names its seed.

Reproduce one seed with ``Sim(seed, params).run(); sim.heal_and_check_liveness()``.
"""

from __future__ import annotations

import pytest

from .sim import Sim, SimParams

CI_SEEDS = range(200)
BLOCKS = 4


def run_seed(seed: int, p: SimParams) -> Sim:
    sim = Sim(seed, p)
    sim.run()
    sim.heal_and_check_liveness()
    return sim


@pytest.mark.parametrize("block", range(BLOCKS))
def test_sim_basic(block: int) -> None:
    """Loss, duplication, reordering, partitions, crashes; 3 or 5 voters."""
    for seed in CI_SEEDS[block::BLOCKS]:
        run_seed(seed, SimParams(voters=3 if seed % 2 else 5, steps=1500))


@pytest.mark.parametrize("block", range(BLOCKS))
def test_sim_snapshots_and_transfers(block: int) -> None:
    """Aggressive compaction forces MsgSnap catch-up; random leader transfers."""
    for seed in CI_SEEDS[block::BLOCKS]:
        p = SimParams(voters=3 if seed % 2 else 5, steps=1500, compact_every=8, transfer=0.01)
        run_seed(10_000 + seed, p)


@pytest.mark.parametrize("block", range(BLOCKS))
def test_sim_membership(block: int) -> None:
    """Add learners, promote them, remove voters and learners, one change at a time."""
    for seed in CI_SEEDS[block::BLOCKS]:
        p = SimParams(voters=3, spares=4, steps=1500, conf_change=0.02, compact_every=12, transfer=0.005)
        run_seed(20_000 + seed, p)


def test_sim_exercises_everything() -> None:
    """Guard against a simulation that silently stops doing the interesting things."""
    p = SimParams(voters=3, spares=4, steps=3000, conf_change=0.02, compact_every=8, transfer=0.01)
    committed = terms = reads = 0
    for seed in range(30):
        sim = run_seed(30_000 + seed, p)
        committed += len(sim.committed)
        terms += max(sim.leader_of_term)
        reads += sim.reads
    c = p.counters
    for key in (
        "crashes",
        "partitions",
        "snapshots_applied",
        "transfers",
        "conf_changes_applied",
        "compactions",
    ):
        assert c.get(key, 0) > 0, (key, c)
    assert committed > 1000 and terms > 60 and reads > 100, (committed, terms, reads)


@pytest.mark.slow
def test_sim_soak() -> None:
    for seed in range(1000, 3000):
        p = SimParams(
            voters=3 + 2 * (seed % 2),
            spares=3 * (seed % 3 == 0),
            steps=5000,
            compact_every=10 * (seed % 4),
            transfer=0.01 * (seed % 5 == 0),
            conf_change=0.02 * (seed % 3 == 0),
        )
        run_seed(seed, p)
