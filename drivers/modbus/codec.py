"""Turn Modbus registers into typed values and back, in any of the four byte/word orders.

Orders name the bytes of a 32-bit value as they arrive on the wire, most significant first:
ABCD is big-endian (Modbus' own order), CDAB sends the low word first (common in meters), BADC
swaps the bytes inside each word and DCBA reverses all four. The same names apply to 64-bit
values: ABCD keeps all four words high first, CDAB sends the lowest word first, BADC swaps the
bytes inside each word, DCBA reverses all eight bytes. For 16-bit values only the byte order
counts: BADC and DCBA swap the two bytes, ABCD and CDAB keep them.

Strings are ASCII, two characters per register, first character in the high byte unless
`byte_swap` says the device puts it in the low byte; trailing NULs and spaces are dropped.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

from agent.settings import ModbusType, WordOrder

__all__ = [
    "Decoder",
    "byte_permutation",
    "decode",
    "decode_string",
    "decoder_for",
    "encode",
    "encode_string",
    "registers_to_bytes",
    "reorder",
]

# Decodes the value whose first register starts at byte offset `at` of the block's bytes.
Decoder = Callable[[bytes, int], int | float]

_FORMAT: dict[str, str] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
_FLOATS = ("float32", "float64")


def byte_permutation(width: int, order: WordOrder) -> tuple[int, ...]:
    """For each byte of the big-endian value, the index of the wire byte that holds it."""
    words = width // 2
    word_sequence = range(words - 1, -1, -1) if order in ("CDAB", "DCBA") else range(words)
    swap_bytes = order in ("BADC", "DCBA")
    permutation: list[int] = []
    for word in word_sequence:
        high, low = 2 * word, 2 * word + 1
        permutation.extend((low, high) if swap_bytes else (high, low))
    return tuple(permutation)


def reorder(wire: bytes, order: WordOrder) -> bytes:
    """The wire bytes of one value rearranged into big-endian order."""
    return bytes(wire[index] for index in byte_permutation(len(wire), order))


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    """The registers as they were on the wire: each one big-endian."""
    return struct.pack(f">{len(registers)}H", *registers)


def decoder_for(value_type: ModbusType, order: WordOrder) -> Decoder:
    """A function decoding one numeric value of this type and order from a block's bytes."""
    if value_type not in _FORMAT:
        raise ValueError(f"{value_type} values are not decoded as numbers")
    unpack = struct.Struct(_FORMAT[value_type]).unpack_from
    width = struct.calcsize(_FORMAT[value_type])
    permutation = byte_permutation(width, order)
    if permutation == tuple(range(width)):
        return lambda data, at: unpack(data, at)[0]

    def decode_reordered(data: bytes, at: int) -> int | float:
        raw = bytes(data[at + index] for index in permutation)
        return unpack(raw)[0]  # type: ignore[no-any-return]

    return decode_reordered


def decode(registers: Sequence[int], value_type: ModbusType, order: WordOrder) -> int | float:
    """Decode one number from exactly the registers it occupies."""
    return decoder_for(value_type, order)(registers_to_bytes(registers), 0)


def decode_string(data: bytes, *, byte_swap: bool = False) -> str:
    """The text in a string point's bytes; non-ASCII bytes become U+FFFD, so nothing is hidden."""
    if byte_swap:
        data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
    return data.decode("ascii", errors="replace").rstrip("\0 ")


def encode_string(text: str, length: int, *, byte_swap: bool = False) -> list[int]:
    """The registers holding `text`, padded with NULs to `length` characters."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{text!r} is not ASCII text") from None
    if len(data) > length:
        raise ValueError(f"{text!r} is longer than the point's {length} characters")
    data = data.ljust(length + length % 2, b"\0")
    if byte_swap:
        data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
    return list(struct.unpack(f">{len(data) // 2}H", data))


def encode(value: float, value_type: ModbusType, order: WordOrder) -> list[int]:
    """The registers to write so that a reader with the same type and order gets `value`."""
    if value_type not in _FORMAT:
        raise ValueError(f"{value_type} values are not encoded as numbers")
    fmt = _FORMAT[value_type]
    if value_type in _FLOATS:
        try:
            big_endian = struct.pack(fmt, float(value))
        except OverflowError:
            raise ValueError(f"{value} is out of range for {value_type}") from None
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} cannot be written as {value_type}")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not a whole number, cannot write it as {value_type}")
        try:
            big_endian = struct.pack(fmt, int(value))
        except struct.error:
            raise ValueError(f"{value} is out of range for {value_type}") from None
    width = len(big_endian)
    wire = bytearray(width)
    for value_index, wire_index in enumerate(byte_permutation(width, order)):
        wire[wire_index] = big_endian[value_index]
    return list(struct.unpack(f">{width // 2}H", bytes(wire)))
