"""The Modbus driver against a real pymodbus server: types, orders, writes, splits, pauses."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from agent.model import Quality
from agent.settings import ModbusPoint, ModbusTcpDevice
from drivers.base import Unsupported
from drivers.modbus.client import ModbusDriver
from drivers.modbus.codec import encode
from drivers.simulate.modbus import SimulatedModbusServer
from tests.conftest import modbus_device, run_devices

ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]
# Values whose bytes are all different, negative numbers, extremes and non-finite floats: an
# order mistake cannot give any of them back.
VALUES: dict[str, list[Any]] = {
    "int16": [0x0102, -2, -32768, 32767],
    "uint16": [0x0102, 0xFFFE],
    "int32": [0x01020304, -0x01020304, -(2**31), 2**31 - 1],
    "uint32": [0x01020304, 0xF1F2F3F4],
    "int64": [0x0102030405060708, -0x0102030405060708, -(2**63), 2**63 - 1],
    "uint64": [0x0102030405060708, 2**64 - 1],
    "float32": [1.5, -2.5e-3, 3.4e38, math.inf, -math.inf],
    "float64": [230.123456789, -1.7e308, math.inf, 5e-324],
}


def device(port: int, points: list[dict[str, Any]], **settings: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(modbus_device("plc", port, points, **settings))


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.mark.parametrize("value_type", list(VALUES))
def test_every_type_in_every_order_is_written_and_read_back_exactly(modbus, value_type):
    points = [
        {"id": f"p_{order}", "address": f"holding:{8 * i}", "type": value_type, "order": order}
        for i, order in enumerate(ORDERS)
    ]
    settings = device(modbus.port, points)

    async def scenario() -> None:
        driver = ModbusDriver(settings)
        await driver.connect()
        try:
            for value in VALUES[value_type]:
                for point in settings.points:
                    await driver.write(point, value, verify=True)
                    # What reached the server is the documented wire layout of that order.
                    wire = modbus.get_registers("holding", point.register, point.width)
                    assert wire == encode(value, value_type, point.order)
                samples = {s.point: s for s in await driver.read(settings.points)}
                for point in settings.points:
                    sample = samples[point.id]
                    if value_type.startswith("float") and not math.isfinite(value):
                        assert sample.quality is Quality.BAD
                        assert sample.reason == f"not a number: {value}"
                        continue
                    assert sample.quality is Quality.GOOD, sample
                    expected = value
                    if value_type == "float32":
                        expected = float(f"{value:.7g}")
                        assert sample.value == pytest.approx(expected, rel=1e-7)
                    else:
                        assert sample.value == expected
        finally:
            await driver.close()

    run(scenario())


def test_nan_from_a_device_is_bad_not_a_number(modbus):
    settings = device(modbus.port, [{"id": "t", "address": "input:0", "type": "float32"}])
    modbus.set_registers("input", 0, [0x7FC0, 0x0000])

    async def scenario() -> list[Any]:
        driver = ModbusDriver(settings)
        await driver.connect()
        try:
            return await driver.read(settings.points)
        finally:
            await driver.close()

    [sample] = run(scenario())
    assert sample.quality is Quality.BAD
    assert sample.reason == "not a number: nan"


def test_strings_bits_and_coils(modbus):
    settings = device(
        modbus.port,
        [
            {"id": "serial", "address": "holding:100", "type": "string", "length": 7},
            {
                "id": "model",
                "address": "holding:110",
                "type": "string",
                "length": 4,
                "byte_swap": True,
            },
            {"id": "alarm_0", "address": "holding:120", "type": "bool", "bit": 0},
            {"id": "alarm_15", "address": "holding:120", "type": "bool", "bit": 15},
            {"id": "alarm_3", "address": "holding:120", "type": "bool", "bit": 3},
            {"id": "running", "address": "coil:5"},
            {"id": "door", "address": "discrete:9"},
        ],
    )
    modbus.set_registers("holding", 110, [0x4D53, 0x3336])  # "SM63" with bytes swapped
    modbus.set_registers("holding", 120, [0x8001])
    modbus.set_registers("discrete", 9, [True])
    points = {p.id: p for p in settings.points}

    async def scenario() -> dict[str, Any]:
        driver = ModbusDriver(settings)
        await driver.connect()
        try:
            await driver.write(points["serial"], "AB-1234", verify=True)
            await driver.write(points["running"], True, verify=True)
            with pytest.raises(Unsupported, match="read-modify-write"):
                await driver.write(points["alarm_3"], True)
            with pytest.raises(Unsupported, match="read-only"):
                await driver.write(points["door"], False)
            with pytest.raises(ValueError, match="longer than"):
                await driver.write(points["serial"], "AB-12345")
            return {s.point: s.value for s in await driver.read(settings.points)}
        finally:
            await driver.close()

    values = run(scenario())
    assert modbus.get_registers("holding", 100, 4) == [0x4142, 0x2D31, 0x3233, 0x3400]
    assert values == {
        "serial": "AB-1234",
        "model": "SM63",
        "alarm_0": True,
        "alarm_15": True,
        "alarm_3": False,
        "running": True,
        "door": True,
    }


def test_writes_use_the_points_scale_and_refuse_values_between_steps(modbus):
    settings = device(
        modbus.port,
        [
            {"id": "setpoint", "address": "holding:0", "type": "int16", "scale": 0.1},
            {"id": "level", "address": "holding:1", "type": "uint16", "offset": -40},
        ],
    )
    setpoint, level = settings.points

    async def scenario() -> None:
        driver = ModbusDriver(settings)
        await driver.connect()
        try:
            await driver.write(setpoint, -23.5)
            await driver.write(level, 60)
            with pytest.raises(ValueError, match=r"not a multiple of setpoint's scale 0\.1"):
                await driver.write(setpoint, 23.45)
        finally:
            await driver.close()

    run(scenario())
    assert modbus.get_registers("holding", 0, 2) == [0x10000 - 235, 100]


def test_write_functions_multiple_uses_fc_16_for_one_register(modbus):
    settings = device(
        modbus.port,
        [{"id": "x", "address": "holding:3", "type": "uint16"}],
        write_functions="multiple",
    )

    async def scenario() -> None:
        driver = ModbusDriver(settings)
        await driver.connect()
        try:
            await driver.write(settings.points[0], 0xBEEF, verify=True)
        finally:
            await driver.close()

    run(scenario())
    assert modbus.get_registers("holding", 3, 1) == [0xBEEF]


def test_a_block_over_a_hole_is_split_the_good_points_read_and_the_split_kept():
    # The device's map has registers 3000-3009 and 3015-3024: 3010-3014 is a hole that a
    # merged request reads through, and the device rejects the whole request for it.
    holes = SimulatedModbusServer(0, extra_ranges=[("holding", 3000, 10), ("holding", 3015, 10)])
    with holes:
        settings = device(
            holes.port,
            [
                {"id": "a", "address": "holding:3000", "type": "uint16"},
                {"id": "b", "address": "holding:3008", "type": "float32"},
                {"id": "c", "address": "holding:3016", "type": "int32", "order": "CDAB"},
                {"id": "missing", "address": "holding:3030", "type": "uint16"},
            ],
        )
        holes.set_registers("holding", 3000, [7])
        holes.set_value("holding", 3008, 21.5, "float32")
        holes.set_value("holding", 3016, -5, "int32", order="CDAB")

        async def scenario() -> tuple[list[Any], list[Any], int, int]:
            driver = ModbusDriver(settings)
            await driver.connect()
            try:
                before = driver.health().requests
                first = await driver.read(settings.points)
                middle = driver.health().requests
                second = await driver.read(settings.points)
                return first, second, middle - before, driver.health().requests - middle
            finally:
                await driver.close()

        first, second, first_requests, second_requests = run(scenario())
    for samples in (first, second):
        by_point = {s.point: s for s in samples}
        assert by_point["a"].value == 7
        assert by_point["b"].value == 21.5
        assert by_point["c"].value == -5
        assert by_point["missing"].quality is Quality.BAD
        assert by_point["missing"].reason == "exception 2 (illegal data address)"
    # First poll: 3000-3030 refused; cut at the widest gap (after c): 3000-3017 refused, cut
    # after a: 3000 answers, 3008-3017 refused, cut: 3008-3009 and 3016-3017 answer; 3030 is
    # refused on its own. 1 + 1 + 1 + 1 + 2 + 1 requests.
    assert first_requests == 7
    # Later polls go straight to the four parts that the cuts left.
    assert second_requests == 4


def test_pause_keeps_the_line_quiet_between_requests(modbus):
    points = [{"id": f"r{i}", "address": f"holding:{100 * i}", "type": "uint16"} for i in range(5)]
    settings = device(modbus.port, points, max_gap=0, pause="50ms")

    async def scenario() -> float:
        driver = ModbusDriver(settings)
        await driver.connect()
        try:
            started = time.monotonic()
            await driver.read(settings.points)
            return time.monotonic() - started
        finally:
            await driver.close()

    # Five requests, each after 50 ms of quiet (the connect probe was the one before).
    assert run(scenario()) >= 5 * 0.05


def test_units_behind_one_gateway_share_its_connection():
    from drivers.modbus.line import ModbusLines

    with SimulatedModbusServer(0, unit_ids=(1, 2)) as server:
        server.set_registers("holding", 0, [11], unit=1)
        server.set_registers("holding", 0, [22], unit=2)
        devices = [
            ModbusTcpDevice.model_validate(
                {
                    **modbus_device(
                        f"u{unit}",
                        server.port,
                        [{"id": f"u{unit}.x", "address": "holding:0", "type": "uint16"}],
                    ),
                    "unit_id": unit,
                }
            )
            for unit in (1, 2)
        ]
        lines = ModbusLines()

        async def scenario() -> list[Any]:
            drivers = [ModbusDriver(d, lines.for_device(d)) for d in devices]
            assert drivers[0].line is drivers[1].line
            for driver in drivers:
                await driver.connect()
            try:
                results = await asyncio.gather(*(d.read(d.device.points) for d in drivers))
            finally:
                lines.close()
            return [sample.value for samples in results for sample in samples]

        assert run(scenario()) == [11, 22]


def test_point_model_is_what_the_driver_reads():
    # Guards the test helpers above: a ModbusPoint with a bit keeps it.
    point = ModbusPoint(id="x", address="holding:1", type="bool", bit=4)
    assert point.protocol_address == "holding:1.4"


def test_random_maps_with_holes_read_exactly_after_their_blocks_are_split():
    # Strings, register bits and numbers of every type scattered around holes in the device's
    # map: whatever splits the driver makes, and however often, each point reads its own value.
    import random

    rng = random.Random(20261125)
    ranges = [("holding", 3000 + 40 * i, rng.randint(8, 30)) for i in range(10)]
    with SimulatedModbusServer(0, extra_ranges=ranges) as server:
        for trial in range(40):
            points: list[dict[str, Any]] = []
            expected: dict[str, Any] = {}
            for table, start, count in rng.sample(ranges, 4):
                at = start + rng.randint(0, 3)
                while at < start + count - 4:
                    kind = rng.choice(["uint16", "float32", "int64", "string", "bit", "int32"])
                    point_id = f"t{trial}_{at}"
                    if kind == "string":
                        text = "".join(rng.choices("ABC123", k=5))
                        points.append(
                            {
                                "id": point_id,
                                "address": f"{table}:{at}",
                                "type": "string",
                                "length": 5,
                            }
                        )
                        server.set_registers(table, at, encode_text(text))
                        expected[point_id], width = text, 3
                    elif kind == "bit":
                        bit = rng.randint(0, 15)
                        points.append(
                            {"id": point_id, "address": f"{table}:{at}", "type": "bool", "bit": bit}
                        )
                        word = rng.randint(0, 0xFFFF)
                        server.set_registers(table, at, [word])
                        expected[point_id], width = bool(word >> bit & 1), 1
                    else:
                        order = rng.choice(ORDERS)
                        value = {"uint16": 0x0102, "float32": 2.5, "int64": -(2**40), "int32": -7}[
                            kind
                        ]
                        points.append(
                            {
                                "id": point_id,
                                "address": f"{table}:{at}",
                                "type": kind,
                                "order": order,
                            }
                        )
                        server.set_value(table, at, value, kind, order=order)  # type: ignore[arg-type]
                        expected[point_id] = value
                        width = {"uint16": 1, "float32": 2, "int64": 4, "int32": 2}[kind]
                    at += width + rng.randint(0, 3)
            # A point in no range at all: always refused, never decoded from someone else's bytes.
            points.append({"id": f"t{trial}_missing", "address": "holding:3035", "type": "uint16"})
            settings = device(server.port, points, max_gap=40)

            for samples in run(three_polls(settings)):
                got = {s.point: s for s in samples}
                assert got.pop(f"t{trial}_missing").quality is Quality.BAD
                assert {k: s.value for k, s in got.items()} == expected, f"trial {trial}"


async def three_polls(settings: ModbusTcpDevice) -> list[list[Any]]:
    driver = ModbusDriver(settings)
    await driver.connect()
    try:
        return [await driver.read(settings.points) for _ in range(3)]
    finally:
        await driver.close()


def encode_text(text: str) -> list[int]:
    from drivers.modbus.codec import encode_string

    return encode_string(text, len(text))


def test_a_dead_unit_does_not_close_the_connection_it_shares_with_a_live_one():
    from drivers.modbus.line import ModbusLines

    with SimulatedModbusServer(0, unit_ids=(1,)) as server:
        server.set_registers("holding", 0, [99])
        live, dead = (
            ModbusTcpDevice.model_validate(
                {
                    **modbus_device(
                        name,
                        server.port,
                        [{"id": f"{name}.x", "address": "holding:0", "type": "uint16"}],
                    ),
                    "unit_id": unit,
                    "interval": interval,
                    "timeout": "100ms",
                    "reconnect_max": "200ms",
                }
            )
            for name, unit, interval in (("live", 1, "1s"), ("dead", 3, "50ms"))
        )
        lines = ModbusLines()

        samples = run(run_devices([live, dead], 3.5, lines))
        [line] = lines
        opens = line.opens
    live_samples = [s for s in samples if s.point == "live.x"]
    assert len(live_samples) >= 3
    assert all(s.quality is Quality.GOOD and s.value == 99 for s in live_samples)
    assert opens == 1, "the shared connection was never closed for the dead unit"
    assert all(s.quality is Quality.BAD for s in samples if s.point == "dead.x")


def test_a_unit_its_gateway_cannot_reach_is_silent_and_its_neighbour_keeps_reading():
    # A TCP gateway answers exception 11 ("target device failed to respond") for unit 5 whose
    # serial device is gone: the rest of unit 5's poll is skipped (each request would cost the
    # gateway's own serial timeout), unit 5 is reported as not answering and backs off, and the
    # connection stays open for unit 1.
    from drivers.modbus.line import ModbusLines

    with SimulatedModbusServer(0, unit_ids=(1,), unreachable_behind_gateway=(5,)) as gateway:
        gateway.set_registers("holding", 0, [42])
        far_points = [
            {"id": f"far.r{i}", "address": f"holding:{100 * i}", "type": "uint16"} for i in range(3)
        ]
        near, far = (
            ModbusTcpDevice.model_validate(
                {**modbus_device(name, gateway.port, points), "unit_id": unit, "max_gap": 0}
            )
            for name, unit, points in (
                ("near", 1, [{"id": "near.x", "address": "holding:0", "type": "uint16"}]),
                ("far", 5, far_points),
            )
        )
        lines = ModbusLines()

        async def scenario() -> tuple[list[Any], int, int]:
            far_driver = ModbusDriver(far, lines.for_device(far))
            await far_driver.line.connect()
            before = far_driver.health().requests
            blocks = await far_driver.read_blocks(far.points)
            asked = far_driver.health().requests - before
            samples = await run_devices([near, far], 1.5, lines)
            [line] = lines
            opens = line.opens
            assert [b.error for b in blocks] == [
                "exception 11 (gateway target did not respond)",
                "not asked: the unit did not answer the previous request of this poll",
                "not asked: the unit did not answer the previous request of this poll",
            ]
            return samples, asked, opens

        samples, asked, opens = run(scenario())
    assert asked == 1, "one request tells; the other two blocks are not sent"
    near_samples = [s for s in samples if s.point == "near.x"]
    assert near_samples and all(s.value == 42 for s in near_samples)
    far_reasons = {s.reason for s in samples if s.point.startswith("far.")}
    assert "unit 5 does not answer (other units on the line do)" in far_reasons
    assert opens == 1


def test_adjacent_points_are_written_in_one_request(modbus):
    points_config = [
        {"id": "class_id", "address": "holding:0", "type": "int16"},
        {"id": "error_code", "address": "holding:1", "type": "int16"},
        {"id": "counter", "address": "holding:2", "type": "uint32"},
        {"id": "gap", "address": "holding:10", "type": "uint16"},
        {"id": "ok", "address": "coil:4"},
        {"id": "ng", "address": "coil:5"},
    ]
    single = device(modbus.port, points_config)
    multiple = device(modbus.port, points_config, write_functions="multiple")
    p = {point.id: point for point in multiple.points}

    async def scenario() -> None:
        driver = ModbusDriver(multiple)
        await driver.connect()
        try:
            assert driver.can_write_together(p["class_id"], p["error_code"])
            assert driver.can_write_together(p["error_code"], p["counter"])
            assert not driver.can_write_together(p["counter"], p["gap"])
            assert driver.can_write_together(p["ok"], p["ng"])
            # FC 15 only where the device says it has it.
            assert not ModbusDriver(single).can_write_together(p["ok"], p["ng"])
            requests = driver.health().requests
            await driver.write_block([p["class_id"], p["error_code"], p["counter"]], [-1, 3, 70000])
            await driver.write_block([p["ok"], p["ng"]], [False, True])
            assert driver.health().requests == requests + 2
            with pytest.raises(ValueError, match="does not directly follow"):
                await driver.write_block([p["counter"], p["gap"]], [1, 2])
            with pytest.raises(ValueError, match="not a coil state"):
                await driver.write_block([p["ok"], p["ng"]], [True, 7])
        finally:
            await driver.close()

    run(scenario())
    assert modbus.get_registers("holding", 0, 4) == [0xFFFF, 3, 1, 70000 - 65536]
    assert modbus.get_registers("coil", 4, 2) == [False, True]
