"""Release versions, the agreed cluster version, and the feature gates built on it.

Two versions, kept apart:

* the etcd API version (``config.VERSION``, a 3.5 series) is what clients see in
  ``Status``, ``/version`` and ``/metrics``; they switch features on by it;
* the datastore's own release (``RELEASE``, tagged ``vMAJOR.MINOR.PATCH`` in git) says what
  the member itself speaks to its peers and writes to its log.

The cluster version is etcd's idea applied to the release line: the lowest ``MAJOR.MINOR``
among the members, decided by the leader (``version_monitor``), agreed through the raft log
(a ``cluster_version_set`` entry), persisted in the state's ``meta`` family (so it survives
restarts and travels in snapshots) and never lowered. A behaviour that changes what goes on
the wire or into the log switches on only once the cluster version reaches the release that
introduced it: every member has it then. Until one is agreed the level is ``BASE_LEVEL``,
what every member of a cluster upgraded from 0.14 understands.

Gating a new behaviour (one line in ``FEATURES``, one check where it is used)::

    FEATURES["batched_append_acks"] = (0, 16)
    ...
    if server.cluster_version.enabled("batched_append_acks"): ...
"""

from __future__ import annotations

import logging
import os
import re
from typing import NoReturn

from rocksdict import WriteBatch

from datastore.api.internalpb.internal_pb2 import ClusterVersionSetRequest
from datastore.logsetup import exit_now
from datastore.storage.backend import Backend

log = logging.getLogger("datastore.server")

RELEASE = "0.15.0"  # this build's release; git tag v0.15.0 when it ships
# Test-only: run as another release (the rolling-upgrade tests pretend a newer one).
RELEASE_ENV = "DATASTORE_TEST_RELEASE"

Level = tuple[int, int]
# What a member that reports no release runs: 0.14 (the last release without cluster
# versions; 0.13 speaks the same protocol). Also the level before one is agreed.
BASE_LEVEL: Level = (0, 14)

# feature -> the cluster version from which it is on.
FEATURES: dict[str, Level] = {
    # The cluster-version entry itself: proposed only when every member can apply it.
    "cluster_version": (0, 15),
}

META_CLUSTER_VERSION = b"cluster_version"
_LEVEL = re.compile(r"^v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?$")


def parse_level(s: str) -> Level:
    """``"0.15"``, ``"0.15.0"``, ``"v0.15.1-rc.1"`` -> ``(0, 15)``."""
    m = _LEVEL.match(s.strip())
    if m is None:
        raise ValueError(f"invalid version {s!r}: use MAJOR.MINOR or MAJOR.MINOR.PATCH")
    return int(m.group(1)), int(m.group(2))


def format_level(level: Level) -> str:
    return f"{level[0]}.{level[1]}"


def release() -> str:
    """This process's release (``RELEASE`` unless a test overrides it)."""
    return os.environ.get(RELEASE_ENV) or RELEASE


def release_level() -> Level:
    return parse_level(release())


class DowngradeRefused(ValueError):
    """This member's release is older than the cluster version it would join (etcd panics
    with the same words in MustDetectDowngrade)."""

    def __init__(self, cluster: Level, where: str) -> None:
        super().__init__(
            "invalid downgrade; server version is lower than determined cluster version "
            f"(server version {format_level(release_level())}, cluster version "
            f"{format_level(cluster)}, {where}): run release {format_level(cluster)} or "
            "later on this member; once the cluster version was raised, a member cannot "
            "go back to an older release")


def fatal_downgrade(err: DowngradeRefused) -> NoReturn:
    """Stop a running member that learned a cluster version above its release (etcd
    panics): one line saying what to do, no traceback."""
    log.critical(str(err))
    exit_now(1)


class ClusterVersion:
    """This member's copy of the agreed cluster version (applied from the log)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._meta = backend.handle("meta")
        self.level: Level | None = None  # None: not agreed yet (BASE_LEVEL applies)
        self.load()

    def load(self) -> None:
        """Read it from the state (at start-up and after a snapshot install)."""
        raw = self._backend.get("meta", META_CLUSTER_VERSION)
        self.level = parse_level(raw.decode()) if raw else None

    @property
    def effective(self) -> Level:
        return self.level if self.level is not None else BASE_LEVEL

    def __str__(self) -> str:
        return format_level(self.effective)

    def at_least(self, level: Level) -> bool:
        """True once every member runs ``level`` or later, as agreed through the log."""
        return self.effective >= level

    def enabled(self, feature: str) -> bool:
        """True once the cluster version reaches the release that introduced ``feature``."""
        return self.at_least(FEATURES[feature])

    def check_local(self, where: str) -> None:
        """Refuse to run a release older than the agreed cluster version."""
        if self.level is not None and release_level() < self.level:
            raise DowngradeRefused(self.level, where)

    def apply(self, req: ClusterVersionSetRequest, wb: WriteBatch, out: object) -> None:
        """Apply a ``cluster_version_set`` entry: raise (never lower) and persist it."""
        new = parse_level(req.ver)
        if self.level is not None and new <= self.level:
            return  # a late duplicate of an older decision
        if release_level() < new:
            # Only a leader that misjudged a member could get here; a member that cannot
            # speak the new version must stop, like etcd's panic on apply.
            raise DowngradeRefused(new, "applying the cluster version from the log")
        log.info("updated cluster version", extra={
            "from": format_level(self.effective) if self.level else "", "to": format_level(new)})
        self.level = new
        wb.put(META_CLUSTER_VERSION, format_level(new).encode(), self._meta)
