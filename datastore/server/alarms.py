"""Raised alarms (NOSPACE, CORRUPT), persisted in ``meta`` and applied from the log."""

from __future__ import annotations

from rocksdict import WriteBatch

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.storage.backend import Backend

_PREFIX = b"alarm/"


class AlarmStore:
    def __init__(self, backend: Backend) -> None:
        self._meta = backend.handle("meta")
        self._alarms: set[tuple[int, int]] = set()
        for k, _ in backend.scan("meta", _PREFIX, _PREFIX + b"\xff"):
            self._alarms.add((int.from_bytes(k[6:14], "big"), k[14]))

    @staticmethod
    def _key(member: int, alarm: int) -> bytes:
        return _PREFIX + member.to_bytes(8, "big") + bytes([alarm])

    @property
    def nospace(self) -> bool:
        # every write asks: an empty set (the usual case) answers without a generator
        return bool(self._alarms) and any(a == rpc.NOSPACE for _, a in self._alarms)

    def list(self) -> list[rpc.AlarmMember]:
        return [rpc.AlarmMember(memberID=m, alarm=a) for m, a in sorted(self._alarms)]

    def activate(self, member: int, alarm: int, wb: WriteBatch) -> bool:
        if (member, alarm) in self._alarms:
            return False
        self._alarms.add((member, alarm))
        wb.put(self._key(member, alarm), b"", self._meta)
        return True

    def deactivate(self, member: int, alarm: int, wb: WriteBatch) -> bool:
        if (member, alarm) not in self._alarms:
            return False
        self._alarms.discard((member, alarm))
        wb.delete(self._key(member, alarm), self._meta)
        return True
