"""Exact request plans for given point sets."""

from __future__ import annotations

from agent.settings import ModbusPoint
from drivers.modbus.planner import plan_reads


def point(address: str, value_type: str | None = "uint16", name: str | None = None) -> ModbusPoint:
    return ModbusPoint(id=name or address.replace(":", "_"), address=address, type=value_type)


def plan(points, *, max_registers=125, max_bits=2000, max_gap=16):
    return [
        (block.table, block.start, block.count, [p.id for p in block.points])
        for block in plan_reads(
            points, max_registers=max_registers, max_bits=max_bits, max_gap=max_gap
        )
    ]


def test_contiguous_points_share_one_request():
    points = [point("holding:0"), point("holding:1"), point("holding:2", "float32")]
    assert plan(points) == [
        ("holding", 0, 4, ["holding_0", "holding_1", "holding_2"]),
    ]


def test_small_gaps_are_read_through_and_large_ones_split():
    points = [point("holding:0"), point("holding:10"), point("holding:40")]
    assert plan(points, max_gap=16) == [
        ("holding", 0, 11, ["holding_0", "holding_10"]),
        ("holding", 40, 1, ["holding_40"]),
    ]
    assert plan(points, max_gap=0) == [
        ("holding", 0, 1, ["holding_0"]),
        ("holding", 10, 1, ["holding_10"]),
        ("holding", 40, 1, ["holding_40"]),
    ]


def test_tables_are_planned_apart_in_a_fixed_order():
    points = [
        point("holding:0"),
        point("input:0"),
        point("coil:0", None),
        point("discrete:5", None),
    ]
    assert [entry[:3] for entry in plan(points)] == [
        ("coil", 0, 1),
        ("discrete", 5, 1),
        ("input", 0, 1),
        ("holding", 0, 1),
    ]


def test_500_float32_fill_requests_without_splitting_a_value():
    points = [point(f"holding:{2 * i}", "float32", f"t{i}") for i in range(500)]
    blocks = plan(points)
    assert len(blocks) == 9  # 1000 registers, at most 124 (62 floats) per request
    assert all(count <= 125 and count % 2 == 0 for _t, _s, count, _p in blocks)
    assert sum(len(ids) for *_rest, ids in blocks) == 500
    assert blocks[0][1:3] == (0, 124)
    assert blocks[1][1] == 124


def test_device_limit_is_respected():
    points = [point(f"holding:{i}") for i in range(10)]
    assert [entry[1:3] for entry in plan(points, max_registers=4)] == [(0, 4), (4, 4), (8, 2)]


def test_bits_use_the_bit_limit():
    points = [point(f"coil:{i}", None) for i in range(0, 3000, 100)]
    blocks = plan(points, max_gap=100)
    assert [entry[1:3] for entry in blocks] == [(0, 1901), (2000, 901)]
