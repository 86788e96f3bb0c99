"""Turn Modbus registers into typed values and back, in any of the four 32-bit orders.

Orders name the bytes of the value as they arrive on the wire, most significant first:
ABCD is big-endian (Modbus' own order), CDAB swaps the two words (common in meters), BADC swaps
the bytes inside each word and DCBA reverses all four. For 16-bit types only the byte order
counts: BADC and DCBA swap the two bytes, ABCD and CDAB keep them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

from agent.settings import ModbusType, WordOrder

__all__ = ["Decoder", "decode", "decoder_for", "encode", "registers_to_bytes"]

# Decodes the value whose first register starts at byte offset `at` of the block's bytes.
Decoder = Callable[[bytes, int], int | float]

_FORMAT: dict[str, str] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
}

# For each order: the wire byte index that becomes value byte 0, 1, 2, 3 (big-endian).
_PERMUTATION: dict[str, tuple[int, ...]] = {
    "ABCD": (0, 1, 2, 3),
    "CDAB": (2, 3, 0, 1),
    "BADC": (1, 0, 3, 2),
    "DCBA": (3, 2, 1, 0),
}


def _permutation(width: int, order: WordOrder) -> tuple[int, ...]:
    if width == 2:
        return (0, 1) if order in ("ABCD", "CDAB") else (1, 0)
    return _PERMUTATION[order]


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    """The registers as they were on the wire: each one big-endian."""
    return struct.pack(f">{len(registers)}H", *registers)


def decoder_for(value_type: ModbusType, order: WordOrder) -> Decoder:
    """A function decoding one value of this type and order from a block's bytes."""
    if value_type == "bool":
        raise ValueError("bits are not decoded from registers")
    unpack = struct.Struct(_FORMAT[value_type]).unpack_from
    width = struct.calcsize(_FORMAT[value_type])
    permutation = _permutation(width, order)
    if permutation == tuple(range(width)):
        return lambda data, at: unpack(data, at)[0]

    def decode_reordered(data: bytes, at: int) -> int | float:
        raw = bytes(data[at + index] for index in permutation)
        return unpack(raw)[0]  # type: ignore[no-any-return]

    return decode_reordered


def decode(registers: Sequence[int], value_type: ModbusType, order: WordOrder) -> int | float:
    """Decode one value from exactly the registers it occupies."""
    return decoder_for(value_type, order)(registers_to_bytes(registers), 0)


def encode(value: float, value_type: ModbusType, order: WordOrder) -> list[int]:
    """The registers to write so that a reader with the same type and order gets `value`."""
    if value_type == "bool":
        raise ValueError("bits are not encoded as registers")
    fmt = _FORMAT[value_type]
    if value_type == "float32":
        big_endian = struct.pack(fmt, float(value))
    else:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not a whole number, cannot write it as {value_type}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} cannot be written as {value_type}")
        try:
            big_endian = struct.pack(fmt, int(value))
        except struct.error:
            raise ValueError(f"{value} is out of range for {value_type}") from None
    width = len(big_endian)
    wire = bytearray(width)
    for value_index, wire_index in enumerate(_permutation(width, order)):
        wire[wire_index] = big_endian[value_index]
    return list(struct.unpack(f">{width // 2}H", bytes(wire)))
