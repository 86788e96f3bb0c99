"""A device task survives a driver bug, reports BAD samples, and keeps its own pace."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from agent.model import Quality, Sample, now_ms
from agent.pipeline import DeviceRunner, Handoff, PipelineStats
from agent.settings import ModbusPoint, ModbusTcpDevice
from drivers.base import NotConnected


class FlakyDriver:
    """Connects, then raises an unexpected error on every second read."""

    endpoint = "test"

    def __init__(self) -> None:
        self.reads = 0
        self.connects = 0

    async def connect(self) -> None:
        self.connects += 1

    async def close(self) -> None:
        pass

    async def read(self, points: Sequence[ModbusPoint]) -> list[Sample]:
        self.reads += 1
        if self.reads % 2 == 0:
            raise RuntimeError("bug in a library")
        return [Sample(p.id, 1, Quality.GOOD, now_ms()) for p in points]


def device() -> ModbusTcpDevice:
    return ModbusTcpDevice(
        name="plc",
        driver="modbus_tcp",
        host="127.0.0.1",
        interval=0.02,
        reconnect_max=0.1,
        points=[ModbusPoint(id="p", address="holding:0", type="int16")],
    )


def test_a_driver_bug_gives_bad_samples_and_polling_goes_on(caplog: pytest.LogCaptureFixture):
    handoff = Handoff(1000, PipelineStats())
    driver = FlakyDriver()
    runner = DeviceRunner(device(), driver, handoff)  # type: ignore[arg-type]

    async def run_briefly() -> None:
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0.6)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR):
        asyncio.run(run_briefly())
    batches = []
    while not handoff.queue.empty():
        batches.append(handoff.queue.get_nowait())
    samples = [s for b in batches if b.kind == "metrics" for s in b.records]
    assert any(s.quality is Quality.GOOD for s in samples)
    bad = [s for s in samples if s.quality is Quality.BAD]
    assert bad and all("bug in a library" in (s.reason or "") for s in bad)
    assert driver.connects >= 2, "the device is connected again after the error"
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, "the traceback is logged once, not at every poll"


class SwallowsCancellation:
    """Connects slowly and, when cancelled meanwhile, reports a failed connect instead of
    passing the cancellation on: what pymodbus does under Python 3.11's asyncio.wait_for when
    the cancellation and a refused connection coincide."""

    endpoint = "test"

    def __init__(self) -> None:
        self.connecting = asyncio.Event()
        self.swallowed = False

    async def connect(self) -> None:
        self.connecting.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if self.swallowed:
                raise  # once is enough: a failing test must still end
            self.swallowed = True
            raise NotConnected("connection refused") from None

    async def close(self) -> None:
        pass


def test_the_device_task_stops_even_when_the_driver_swallows_the_cancellation():
    runner = DeviceRunner(device(), SwallowsCancellation(), Handoff(1000, PipelineStats()))  # type: ignore[arg-type]

    async def stop_while_connecting() -> None:
        task = asyncio.create_task(runner.run())
        await runner.driver.connecting.wait()  # type: ignore[attr-defined]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), 2)

    asyncio.run(stop_while_connecting())
