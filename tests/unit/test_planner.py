"""Exact request plans for given point sets."""

from __future__ import annotations

from agent.settings import ModbusPoint
from drivers.modbus.planner import plan_reads, split_block


def point(
    address: str, value_type: str | None = "uint16", name: str | None = None, **extra: object
) -> ModbusPoint:
    return ModbusPoint(
        id=name or address.replace(":", "_"), address=address, type=value_type, **extra
    )


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


def test_500_contiguous_float32_take_9_requests_not_8():
    # 1,000 registers would fit 8 requests of 125 only by cutting a float in half; a value
    # read in two requests can mix two different moments, so the planner never does that.
    points = [point(f"input:{2 * i}", "float32", f"t{i}") for i in range(500)]
    assert len(plan(points)) == 9


def test_64_bit_values_and_strings_are_never_split():
    points = [point(f"holding:{4 * i}", "uint64", f"e{i}") for i in range(40)]
    blocks = plan(points)
    assert [entry[1:3] for entry in blocks] == [(0, 124), (124, 36)]
    text = point("holding:200", "string", "serial", length=15)
    assert plan([text]) == [("holding", 200, 8, ["serial"])]


def test_bits_of_one_register_share_it():
    points = [
        point("holding:7", "bool", "alarm_a", bit=0),
        point("holding:7", "bool", "alarm_b", bit=15),
        point("holding:8", "int16", "speed"),
    ]
    assert plan(points) == [("holding", 7, 2, ["alarm_a", "alarm_b", "speed"])]


def test_scattered_points_with_small_gaps_merge_and_large_gaps_do_not():
    points = [
        point("input:0", "float32", "v1"),
        point("input:2", "float32", "v2"),
        point("input:12", "float32", "p1"),  # 8-register gap: read through
        point("input:52", "float32", "p_total"),  # 38-register gap: a new request
        point("input:70", "float32", "f"),
        point("input:72", "float32", "e_import"),
    ]
    assert plan(points, max_gap=16) == [
        ("input", 0, 14, ["v1", "v2", "p1"]),
        ("input", 52, 22, ["p_total", "f", "e_import"]),
    ]
    assert len(plan(points, max_gap=40)) == 1


def test_a_rejected_block_is_cut_at_its_widest_gap_and_each_part_spans_only_its_points():
    points = [
        point("holding:0", "float32", "a"),
        point("holding:2", "float32", "b"),
        point("holding:10", "uint16", "c"),
        point("holding:30", "uint16", "d"),
        point("holding:31", "uint16", "e"),
    ]
    [block] = plan_reads(points, max_registers=125, max_bits=2000, max_gap=20)
    parts = split_block(block)
    assert [(b.start, b.count, [p.id for p in b.points]) for b in parts] == [
        (0, 11, ["a", "b", "c"]),
        (30, 2, ["d", "e"]),
    ]
    assert [(b.start, b.count) for b in split_block(parts[0])] == [(0, 4), (10, 1)]
    # No unused registers left: cut in the middle.
    assert [(b.start, b.count) for b in split_block(parts[1])] == [(30, 1), (31, 1)]
