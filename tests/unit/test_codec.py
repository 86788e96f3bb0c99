"""Every type in every order decodes what was encoded, with values that reveal order mistakes."""

from __future__ import annotations

import math
import struct

import pytest

from drivers.modbus.codec import decode, decode_string, encode, encode_string, registers_to_bytes


def float32(value: float) -> float:
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]

VALUES = {
    "int16": [0, 1, -1, 0x0102, -32768, 32767],
    "uint16": [0, 1, 0x0102, 0xFFFF],
    "int32": [0, -1, 0x01020304, -0x01020304, -(2**31), 2**31 - 1],
    "uint32": [0, 0x01020304, 0xF1F2F3F4, 2**32 - 1],
    "float32": [0.0, -0.0, 1.5, -2.5e-3, 3.4e38, 1.0e-38, 21.5, math.inf, -math.inf],
    "int64": [0, -1, 0x0102030405060708, -0x0102030405060708, -(2**63), 2**63 - 1],
    "uint64": [0, 0x0102030405060708, 0xF1F2F3F4F5F6F7F8, 2**64 - 1],
    "float64": [0.0, -0.0, 1.5, -2.5e-3, 1.7e308, 5e-324, 230.123456789, math.inf, -math.inf],
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("value_type", list(VALUES))
def test_round_trip(value_type, order):
    for value in VALUES[value_type]:
        expected = float32(value) if value_type == "float32" else value
        assert decode(encode(value, value_type, order), value_type, order) == expected


def test_wire_layout_of_each_order():
    # 0x01020304 as bytes A=01 B=02 C=03 D=04.
    assert encode(0x01020304, "uint32", "ABCD") == [0x0102, 0x0304]
    assert encode(0x01020304, "uint32", "CDAB") == [0x0304, 0x0102]
    assert encode(0x01020304, "uint32", "BADC") == [0x0201, 0x0403]
    assert encode(0x01020304, "uint32", "DCBA") == [0x0403, 0x0201]
    assert encode(0x0102, "uint16", "ABCD") == [0x0102]
    assert encode(0x0102, "uint16", "BADC") == [0x0201]


def test_wire_layout_of_each_64_bit_order():
    # 0x0102030405060708: the four orders generalise to four words.
    value = 0x0102030405060708
    assert encode(value, "uint64", "ABCD") == [0x0102, 0x0304, 0x0506, 0x0708]
    assert encode(value, "uint64", "CDAB") == [0x0708, 0x0506, 0x0304, 0x0102]
    assert encode(value, "uint64", "BADC") == [0x0201, 0x0403, 0x0605, 0x0807]
    assert encode(value, "uint64", "DCBA") == [0x0807, 0x0605, 0x0403, 0x0201]


def test_an_order_mistake_is_visible():
    # Decoding in a wrong order never returns the value: the test values above would hide
    # nothing if two orders coincided for them.
    registers = encode(0x01020304, "uint32", "CDAB")
    decoded = {order: decode(registers, "uint32", order) for order in ORDERS}
    assert decoded["CDAB"] == 0x01020304
    assert len(set(decoded.values())) == 4


@pytest.mark.parametrize("value_type", ["float32", "float64"])
@pytest.mark.parametrize("order", ORDERS)
def test_nan_round_trips_in_every_order(value_type, order):
    assert math.isnan(decode(encode(math.nan, value_type, order), value_type, order))


def test_strings_pack_two_characters_per_register():
    assert encode_string("AB12", 4) == [0x4142, 0x3132]
    assert encode_string("AB1", 4) == [0x4142, 0x3100]
    assert encode_string("AB1", 3) == [0x4142, 0x3100]
    assert encode_string("AB12", 4, byte_swap=True) == [0x4241, 0x3231]
    assert decode_string(registers_to_bytes([0x4142, 0x3100])) == "AB1"
    assert decode_string(registers_to_bytes([0x4241, 0x3231]), byte_swap=True) == "AB12"
    assert decode_string(registers_to_bytes([0x4142, 0x2020])) == "AB"


def test_strings_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="longer than"):
        encode_string("ABCDE", 4)
    with pytest.raises(ValueError, match="not ASCII"):
        encode_string("Grüße", 8)


def test_non_ascii_bytes_are_shown_not_hidden():
    assert decode_string(bytes([0x41, 0xFF])) == "A\ufffd"


def test_float32_from_a_meter_register_pair():
    # 230.0 V as an Eastron meter sends it (big-endian IEEE 754).
    assert decode([0x4366, 0x0000], "float32", "ABCD") == 230.0
    assert decode([0x0000, 0x4366], "float32", "CDAB") == 230.0


def test_non_finite_floats_decode_as_such():
    nan = struct.unpack(">HH", struct.pack(">f", math.nan))
    assert math.isnan(decode(list(nan), "float32", "ABCD"))
    inf = struct.unpack(">HH", struct.pack(">f", math.inf))
    assert decode(list(inf), "float32", "ABCD") == math.inf


@pytest.mark.parametrize(
    ("value", "value_type"),
    [
        (70000, "uint16"),
        (-1, "uint32"),
        (1.5, "int16"),
        (2**31, "int32"),
        (math.nan, "int32"),
        (2**64, "uint64"),
        (-(2**63) - 1, "int64"),
        (1e39, "float32"),
        (math.inf, "int64"),
    ],
)
def test_encode_refuses_values_that_do_not_fit(value, value_type):
    with pytest.raises(ValueError, match=r"out of range|not a whole number|cannot be written"):
        encode(value, value_type, "ABCD")
