"""Modbus RTU on a serial line (socat pseudo-terminals) and RTU framing over TCP: units share the
line fairly, a dead unit costs the others no more than its own timeout, a line comes back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import pytest

from agent.model import Quality, Sample
from agent.pipeline import DeviceRunner, Handoff, PipelineStats
from agent.settings import ModbusDevice, ModbusRtuDevice, ModbusRtuOverTcpDevice
from drivers.modbus.client import ModbusDriver
from tests.conftest import run_devices

INTERVAL = 0.2
RUN_SECONDS = 4.0


def rtu_device(port: str, unit: int, **settings: Any) -> ModbusRtuDevice:
    return ModbusRtuDevice.model_validate(
        {
            "name": f"unit{unit}",
            "driver": "modbus_rtu",
            "serial_port": port,
            "baudrate": 19200,
            "unit_id": unit,
            "interval": INTERVAL,
            "timeout": "150ms",
            "reconnect_max": "2s",
            "points": [
                {"id": f"unit{unit}.power", "address": "input:0", "type": "float32"},
                {"id": f"unit{unit}.energy", "address": "input:10", "type": "uint64"},
            ],
            **settings,
        }
    )


def test_three_units_on_one_line_one_dead_the_others_keep_their_rate(
    serial_pair, rtu_simulator, caplog: pytest.LogCaptureFixture
):
    server = rtu_simulator(units=(1, 2), baudrate=19200)
    for unit, power in ((1, 1500.5), (2, 2500.25)):
        server.set_value("input", 0, power, "float32", unit=unit)
        server.set_value("input", 10, 2**40 + unit, "uint64", unit=unit)
    # The dead unit retries often (backoff capped at 300 ms), so it keeps claiming the line with
    # requests that time out: the others must still get their turns.
    devices: list[ModbusDevice] = [
        rtu_device(serial_pair[1], 1),
        rtu_device(serial_pair[1], 2),
        rtu_device(serial_pair[1], 3, reconnect_max="300ms"),
    ]

    with caplog.at_level(logging.INFO):
        samples = asyncio.run(run_devices(devices, RUN_SECONDS))

    good = Counter(s.point for s in samples if s.quality is Quality.GOOD)
    expected_polls = RUN_SECONDS / INTERVAL
    for unit in (1, 2):
        # Within 20 % of the configured rate despite unit 3 timing out on the same line.
        assert good[f"unit{unit}.power"] >= 0.8 * expected_polls, good
        values = {s.value for s in samples if s.point == f"unit{unit}.energy"}
        assert values == {2**40 + unit}
    dead = [s for s in samples if s.point == "unit3.power"]
    assert dead and all(s.quality is Quality.BAD for s in dead)
    assert dead[-1].reason == "unit 3 does not answer (other units on the line do)"
    # Reported once, not at every retry.
    unreachable = [
        r for r in caplog.records if "unit3" in r.getMessage() and "unreachable" in r.getMessage()
    ]
    assert len(unreachable) == 1


def test_an_rtu_device_comes_back_after_its_line_was_gone(serial_pair, rtu_simulator):
    server = rtu_simulator(units=(1,), baudrate=19200)
    server.set_value("input", 0, 42.0, "float32")
    device = rtu_device(serial_pair[1], 1, reconnect_max="500ms")

    async def scenario() -> list[tuple[float, Sample]]:
        handoff = Handoff(100_000, PipelineStats())
        runner = DeviceRunner(device, ModbusDriver(device), handoff)
        task = asyncio.create_task(runner.run())
        timeline: list[tuple[float, Sample]] = []

        async def collect(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    batch = await asyncio.wait_for(handoff.queue.get(), 0.1)
                except TimeoutError:
                    continue
                if batch.kind == "metrics":
                    timeline.extend((time.monotonic(), s) for s in batch.records)  # type: ignore[misc]

        await collect(1.0)
        await asyncio.to_thread(server.stop)
        await collect(1.5)
        await asyncio.to_thread(server.start)
        restarted = time.monotonic()
        await collect(3.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        timeline.append((restarted, Sample("marker", None, Quality.GOOD, 0)))
        return timeline

    timeline = asyncio.run(scenario())
    restarted = next(t for t, s in timeline if s.point == "marker")
    power = [(t, s) for t, s in timeline if s.point == "unit1.power"]
    qualities = [s.quality for _, s in power]
    assert qualities[0] is Quality.GOOD
    assert Quality.BAD in qualities, "the silent line is reported"
    back = [t for t, s in power if t > restarted and s.quality is Quality.GOOD]
    assert back and back[0] - restarted < 2.5, "GOOD again within a few seconds"
    assert power[-1][1].value == 42.0


def test_rtu_over_tcp_reads_units_behind_a_converter(simulator_factory):
    server = simulator_factory("rtu_tcp", units=(4, 5))
    server.set_value("holding", 100, -123456789, "int32", order="CDAB", unit=4)
    server.set_value("holding", 100, 987654321, "int32", order="CDAB", unit=5)
    devices: list[ModbusDevice] = [
        ModbusRtuOverTcpDevice.model_validate(
            {
                "name": f"unit{unit}",
                "driver": "modbus_rtu_tcp",
                "host": "127.0.0.1",
                "port": server.port,
                "unit_id": unit,
                "pause": "20ms",
                "interval": INTERVAL,
                "points": [
                    {
                        "id": f"u{unit}.count",
                        "address": "holding:100",
                        "type": "int32",
                        "order": "CDAB",
                    }
                ],
            }
        )
        for unit in (4, 5)
    ]
    samples = asyncio.run(run_devices(devices, 1.0))
    values = {s.point: s.value for s in samples if s.quality is Quality.GOOD}
    assert values == {"u4.count": -123456789, "u5.count": 987654321}


def test_the_agent_publishes_from_an_rtu_bus_end_to_end(
    serial_pair, rtu_simulator, broker, subscriber_factory, agent_factory, tmp_path
):
    from tests.conftest import write_config

    server = rtu_simulator(units=(1, 2), baudrate=19200)
    server.set_value("input", 0, 1500.5, "float32", unit=1)
    server.set_value("input", 0, 2500.25, "float32", unit=2)
    devices = [
        {
            "name": f"meter{unit}",
            "driver": "modbus_rtu",
            "serial_port": serial_pair[1],
            "baudrate": 19200,
            "unit_id": unit,
            "interval": "200ms",
            "timeout": "200ms",
            "points": [{"id": f"meter{unit}.power", "address": "input:0", "type": "float32"}],
        }
        for unit in (1, 2)
    ]
    config = write_config(tmp_path, broker_port=broker.port, devices=devices)
    subscriber = subscriber_factory(broker.port)
    agent = agent_factory(config)
    agent.start()
    subscriber.wait_for(
        lambda: subscriber.samples_of("meter1.power") and subscriber.samples_of("meter2.power"),
        what="samples from both meters on the bus",
    )
    assert subscriber.samples_of("meter1.power")[-1]["v"] == 1500.5
    assert subscriber.samples_of("meter2.power")[-1]["v"] == 2500.25
    assert subscriber.samples_of("meter1.power")[-1]["q"] == "good"
