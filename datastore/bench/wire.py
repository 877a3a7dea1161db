"""The wire side of the load: gRPC method paths, keys, and requests encoded by hand.

Put/Range requests are built from bytes (no protobuf objects per request), so the
per-request Python cost stays at a few microseconds on top of gRPC's own.
"""

from __future__ import annotations

import random

from datastore.util.protowire import varint

PUT = "/etcdserverpb.KV/Put"
RANGE = "/etcdserverpb.KV/Range"
TXN = "/etcdserverpb.KV/Txn"
WATCH = "/etcdserverpb.Watch/Watch"


def ld_field(fieldno: int, data: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(fieldno << 3 | 2) + varint(len(data)) + data


class KeyGen:
    """Fixed-size keys ``prefix + zero-padded index`` over a key space, plus request encoders."""

    def __init__(self, prefix: bytes, key_size: int, key_space: int, val_size: int,
                 rng: random.Random) -> None:
        digits = max(len(str(max(key_space - 1, 0))), key_size - len(prefix), 1)
        self.prefix = prefix
        self.digits = digits
        self.key_space = max(1, key_space)
        self.key_len = len(prefix) + digits
        self.rng = rng
        self.value = bytes(rng.getrandbits(8) for _ in range(val_size)) if val_size else b""
        self._key_head = varint(1 << 3 | 2) + varint(self.key_len)  # field 1 (key)
        self._put_tail = ld_field(2, self.value) if self.value else b""

    def key(self, i: int) -> bytes:
        return self.prefix + b"%0*d" % (self.digits, i)

    def random_index(self) -> int:
        return self.rng.randrange(self.key_space)

    def put_req(self, i: int) -> bytes:
        return self._key_head + self.key(i) + self._put_tail

    def range_req(self, i: int, serializable: bool) -> bytes:
        # field 7 (serializable), varint true
        return self._key_head + self.key(i) + (b"\x38\x01" if serializable else b"")


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for 'every key with this prefix'."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"
