"""HashKV convergence: every member answers with the same hash at one revision.

An error (a member still behind: "required revision is a future revision", or down) is
never agreement, even when every member reports the same error text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any


def hashes_agree(answers: Mapping[str, int | BaseException]) -> bool:
    """True only when every member answered with a hash and the hashes are equal."""
    if not answers or any(isinstance(a, BaseException) for a in answers.values()):
        return False
    return len(set(answers.values())) == 1


async def wait_hashkv_equal(client: Any, endpoints: Sequence[str], revision: int, wait_s: float) -> None:
    """Poll HashKV at ``revision`` on every endpoint until all agree (members may still be
    applying up to it); fail with every member's answer at the deadline."""
    deadline = time.monotonic() + wait_s
    while True:
        answers: dict[str, int | BaseException] = {}
        for ep in endpoints:
            try:
                answers[ep] = (await client.hash_kv(ep, revision=revision)).hash
            except Exception as e:  # behind, or not answering yet: not agreement
                answers[ep] = e
        if hashes_agree(answers):
            return
        assert time.monotonic() < deadline, (
            f"HashKV not equal on every member at revision {revision}: "
            + ", ".join(f"{ep}={a!r}" for ep, a in answers.items()))
        await asyncio.sleep(0.1)  # poll interval of the condition above
