"""Encoding of ``ConfChange`` inside an EntryConfChange's data.

The core owns the encoding so ``propose_conf_change(cc)`` takes a value; the driver
decodes committed EntryConfChange entries with ``decode_conf_change`` and passes the
result to ``RawNode.apply_conf_change``. Layout: version byte, type byte, node_id and id
as big-endian u64, then ``context`` verbatim.
"""

from __future__ import annotations

import struct

from datastore.raft.types import ConfChange, ConfChangeType

_HEADER = struct.Struct(">BBQQ")
_VERSION = 1


def encode_conf_change(cc: ConfChange) -> bytes:
    return _HEADER.pack(_VERSION, int(cc.type), cc.node_id, cc.id) + cc.context


def decode_conf_change(data: bytes) -> ConfChange:
    if len(data) < _HEADER.size:
        raise ValueError("raft: conf change data too short")
    version, typ, node_id, cc_id = _HEADER.unpack_from(data)
    if version != _VERSION:
        raise ValueError(f"raft: unknown conf change encoding {version}")
    return ConfChange(
        type=ConfChangeType(typ), node_id=node_id, id=cc_id, context=bytes(data[_HEADER.size :])
    )
