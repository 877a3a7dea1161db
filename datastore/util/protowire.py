"""Protobuf wire-format pieces for responses assembled from already-encoded bytes."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """Protobuf varint (int64 negatives as their 64-bit two's complement)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
