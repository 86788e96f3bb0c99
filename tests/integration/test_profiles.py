"""Every shipped profile, read through the config loader and the Modbus driver from a simulated
meter that encodes each quantity as the real meter would."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.config import load_config, profile_names
from agent.model import Quality, Sample
from agent.settings import ModbusDevice
from agent.transforms import scaled
from drivers.modbus.client import ModbusDriver
from drivers.simulate.broker import free_port
from drivers.simulate.meters import SimulatedMeter
from tests.conftest import modbus_device, write_config

# float32 keeps 24 bits: about 6e-8 of the value; scaling adds a rounding of its own.
FLOAT32_TOLERANCE = 1e-6


async def read_all(device: ModbusDevice) -> tuple[list[Sample], list[int]]:
    driver = ModbusDriver(device)
    await driver.connect()
    try:
        counts = [block.count for block in driver.plan(device.points)]
        return await driver.read(device.points), counts
    finally:
        await driver.close()


@pytest.mark.parametrize("profile", profile_names())
def test_every_quantity_reads_as_the_meter_encodes_it(tmp_path: Path, profile: str) -> None:
    meter = SimulatedMeter(profile, free_port(), unit_id=3)
    meter.start()
    try:
        config_path = write_config(
            tmp_path,
            broker_port=1883,  # not used: only the device is read
            devices=[modbus_device("meter", meter.server.port, [], profile=profile, unit_id=3)],
        )
        device = load_config(config_path).devices[0]
        samples, counts = asyncio.run(read_all(device))
    finally:
        meter.stop()

    assert all(count <= device.max_registers for count in counts), counts
    points = {point.id: point for point in device.points}
    readings = {}
    for sample in samples:
        assert sample.quality is Quality.GOOD, sample
        point = points[sample.point]
        readings[sample.point.removeprefix("meter.")] = scaled(
            sample.value, point.scale, point.offset
        )
    expected = meter.expected
    assert sorted(readings) == sorted(expected)
    for quantity, value in expected.items():
        assert readings[quantity] == pytest.approx(value, rel=FLOAT32_TOLERANCE), quantity


def test_a_subset_of_quantities_on_a_cdab_meter(tmp_path: Path) -> None:
    with SimulatedMeter("carlo-gavazzi-em340", free_port()) as meter:
        config_path = write_config(
            tmp_path,
            broker_port=1883,
            devices=[
                modbus_device(
                    "em340",
                    meter.server.port,
                    [],
                    profile="carlo-gavazzi-em340",
                    quantities=["reactive_power_l2", "voltage_l1", "energy_export"],
                )
            ],
        )
        device = load_config(config_path).devices[0]
        samples, _counts = asyncio.run(read_all(device))
    values = {sample.point: sample.value for sample in samples}
    # Raw register values: the scale is applied by the pipeline's transforms.
    assert values == {
        "em340.voltage_l1": round(meter.expected["voltage_l1"] * 10),
        "em340.reactive_power_l2": round(meter.expected["reactive_power_l2"] * 10),
        "em340.energy_export": round(meter.expected["energy_export"] * 10),
    }
    reactive = values["em340.reactive_power_l2"]
    assert isinstance(reactive, int) and reactive < 0  # signed, low word first


def test_a_quantity_the_meter_does_not_support_is_bad_not_a_huge_number(tmp_path: Path) -> None:
    # An import-only ABB B23 answers all 0xFF for export energy and 0x7FFF for a power factor it
    # cannot measure; published as numbers they would read 1.8e17 kWh and 32.767.
    meter = SimulatedMeter("abb-b23", free_port(), unit_id=3)
    meter.start()
    try:
        meter.server.set_registers("holding", 20484, [0xFFFF] * 4, unit=3)
        meter.server.set_registers("holding", 23355, [0x7FFF], unit=3)
        config_path = write_config(
            tmp_path,
            broker_port=1883,
            devices=[
                modbus_device(
                    "meter",
                    meter.server.port,
                    [],
                    profile="abb-b23",
                    quantities=["energy_import", "energy_export", "power_factor_l1"],
                    unit_id=3,
                )
            ],
        )
        device = load_config(config_path).devices[0]
        samples, _ = asyncio.run(read_all(device))
    finally:
        meter.stop()
    by_point = {sample.point: sample for sample in samples}
    assert by_point["meter.energy_import"].quality is Quality.GOOD
    assert by_point["meter.energy_export"].quality is Quality.BAD
    assert by_point["meter.energy_export"].reason == "not available (raw 0xffffffffffffffff)"
    assert by_point["meter.power_factor_l1"].value is None
    assert by_point["meter.power_factor_l1"].reason == "not available (raw 0x7fff)"
