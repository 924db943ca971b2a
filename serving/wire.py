"""The protobuf wire format, for the few messages the server writes or
checks by hand where building them through the protobuf API cost more than
the model (serving/tensors.py, serving/model_store.py)."""
from __future__ import annotations


_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    if value < 0x80:  # most tags and lengths here
        return _ONE_BYTE[value]
    if value < 0x4000:  # a serialized Example's length, most often
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    """One length-delimited field: its tag byte(s), the length, the payload."""
    return tag + varint(len(payload)) + payload
