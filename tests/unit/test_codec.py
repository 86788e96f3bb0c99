"""Every type in every order decodes what was encoded, with values that reveal order mistakes."""

from __future__ import annotations

import math
import struct

import pytest

from drivers.modbus.codec import decode, encode


def float32(value: float) -> float:
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]

VALUES = {
    "int16": [0, 1, -1, 0x0102, -32768, 32767],
    "uint16": [0, 1, 0x0102, 0xFFFF],
    "int32": [0, -1, 0x01020304, -0x01020304, -(2**31), 2**31 - 1],
    "uint32": [0, 0x01020304, 0xF1F2F3F4, 2**32 - 1],
    "float32": [0.0, -0.0, 1.5, -2.5e-3, 3.4e38, 1.0e-38, 21.5],
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
    [(70000, "uint16"), (-1, "uint32"), (1.5, "int16"), (2**31, "int32"), (math.nan, "int32")],
)
def test_encode_refuses_values_that_do_not_fit(value, value_type):
    with pytest.raises(ValueError, match=r"out of range|not a whole number|cannot be written"):
        encode(value, value_type, "ABCD")
