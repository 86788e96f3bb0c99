"""The workload and the measured processes of `bench.modbus_planner`.

    python -m bench.planner_subjects serve PORT
    python -m bench.planner_subjects agent PORT [--duration 10] [--warmup 1]
    python -m bench.planner_subjects bare PORT PLAN.json [--duration 10] [--warmup 1]

Workload: 2,000 points on 4 Modbus units (ids 1-4) behind one Modbus TCP endpoint, 500 per
unit: 240 holding registers (float32, uint16, int32, float64), 160 input registers (float32,
uint16, int32; CDAB word order on unit 4, like a meter) and 100 coils. Points follow each other
with small gaps (mostly none, sometimes 1-8 registers) and now and then a jump of 20-60
registers to the next section of the register map, more than the driver's `max_gap` of 16, so
the planner has to cut there. The layout and the values are drawn from a fixed seed: every
process builds the same workload.

- `serve` runs the simulated server (`drivers.simulate.modbus.SimulatedModbusServer`, units
  1-4) holding every point's value, prints `READY <port>` and runs until SIGTERM or SIGINT.
- `agent` polls the 4 units with the agent's driver (`ModbusDriver` on one shared line), one
  asyncio task per unit, as fast as it can.
- `bare` issues the requests listed in PLAN.json (`[[unit, table, start, count, points], ...]`)
  in one loop on one `AsyncModbusTcpClient`, decoding each register answer with one
  precompiled struct (the request's `format`; word order ignored) and taking bits as pymodbus
  gives them: the fastest a hand-written loop gets the values.

The measured subjects poll for `--warmup` seconds, print `BEGIN` and measure `--duration`
seconds: requests, points, polls and their own CPU time (`time.process_time()`, every thread
of the process). Then they print `RESULT <json>` and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import random
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

UNITS = (1, 2, 3, 4)
HOST = "127.0.0.1"
SEED = 2000
# Points per unit and table, and the mix of types (weights) in the register tables.
POINTS_PER_UNIT = {"holding": 240, "input": 160, "coil": 100}
TYPE_MIX = {
    "holding": (("float32", 50), ("uint16", 20), ("int32", 20), ("float64", 10)),
    "input": (("float32", 60), ("uint16", 25), ("int32", 15)),
}
WIDTH = {"bool": 1, "uint16": 1, "int32": 2, "float32": 2, "float64": 4}
CDAB_UNIT = 4  # its input registers hold 32-bit values low word first
TABLE_SIZE = 2_000  # addresses per table in SimulatedModbusServer
TIMEOUT_S = 1.0  # Modbus response timeout, agent and bare alike
# A measured subject gives up this long after its window should have ended.
OVERRUN_S = 30.0

Value = float | int | bool


@dataclass(frozen=True, slots=True)
class WorkloadPoint:
    """One point of the workload and the value the server holds for it."""

    id: str
    unit: int
    table: str  # "holding", "input" or "coil"
    address: int
    type: str  # "bool" for coils
    order: str
    value: Value  # exactly what a correct reader decodes

    @property
    def width(self) -> int:
        return WIDTH[self.type]


def _gap(rng: random.Random, table: str) -> int:
    """Unused addresses before the next point."""
    draw = rng.random()
    if table == "coil":
        return 0 if draw < 0.8 else rng.randint(1, 3)
    if draw < 0.70:
        return 0
    if draw < 0.90:
        return rng.randint(1, 2)
    if draw < 0.98:
        return rng.randint(3, 8)
    return rng.randint(20, 60)  # the next section of the map: beyond max_gap, a new request


def _value(rng: random.Random, value_type: str) -> Value:
    if value_type == "bool":
        return rng.random() < 0.4
    if value_type == "uint16":
        return rng.randrange(65536)
    if value_type == "int32":
        return rng.randrange(-(2**31), 2**31)
    if value_type == "float32":
        drawn = round(rng.uniform(-500.0, 5000.0), 3)
        return float(struct.unpack(">f", struct.pack(">f", drawn))[0])  # as float32 holds it
    if value_type == "float64":
        return rng.uniform(-1e6, 1e6)
    raise ValueError(value_type)


def workload() -> list[WorkloadPoint]:
    """The 2,000 points, unit by unit, table by table, in address order."""
    points: list[WorkloadPoint] = []
    for unit in UNITS:
        rng = random.Random(SEED + unit)
        for table, count in POINTS_PER_UNIT.items():
            address = rng.randint(0, 4)
            mix = TYPE_MIX.get(table, (("bool", 1),))
            types = [name for name, _ in mix]
            weights = [weight for _, weight in mix]
            for index in range(count):
                value_type = rng.choices(types, weights)[0]
                order = "CDAB" if unit == CDAB_UNIT and table == "input" else "ABCD"
                point_id = f"u{unit}.{table}.{index:03d}"
                value = _value(rng, value_type)
                points.append(
                    WorkloadPoint(point_id, unit, table, address, value_type, order, value)
                )
                address += WIDTH[value_type] + _gap(rng, table)
            if address > TABLE_SIZE:
                raise AssertionError(f"unit {unit} {table} ends at {address} > {TABLE_SIZE}")
    return points


_STRUCT_CODE = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
_STRUCT_CODE.update({"int64": "q", "uint64": "Q", "float64": "d"})


def one_per_point_plan(points: Sequence[WorkloadPoint]) -> list[list[Any]]:
    """Every point read alone: `[unit, table, address, width, 1, format]` each."""
    return [
        [
            point.unit,
            point.table,
            point.address,
            point.width,
            1,
            "" if point.table == "coil" else ">" + _STRUCT_CODE[point.type],
        ]
        for point in points
    ]


def point_config(point: WorkloadPoint) -> dict[str, Any]:
    """The point as it would be written in an agent configuration."""
    config: dict[str, Any] = {"id": point.id, "address": f"{point.table}:{point.address}"}
    if point.table != "coil":
        config["type"] = point.type
        if point.order != "ABCD":
            config["order"] = point.order
    return config


def device_config(unit: int, port: int, points: Sequence[WorkloadPoint]) -> dict[str, Any]:
    """An agent `modbus_tcp` device for one unit, with the driver's defaults otherwise."""
    return {
        "name": f"unit{unit}",
        "driver": "modbus_tcp",
        "host": HOST,
        "port": port,
        "unit_id": unit,
        "interval": "10ms",
        "timeout": TIMEOUT_S,
        "points": [point_config(point) for point in points if point.unit == unit],
    }


# -- the server --------------------------------------------------------------------------------


def serve(port: int) -> int:
    from drivers.modbus.codec import encode
    from drivers.simulate.modbus import SimulatedModbusServer

    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    registers: dict[tuple[int, str], list[int]] = {}
    bits: dict[tuple[int, str], list[bool]] = {}
    for point in workload():
        key = (point.unit, point.table)
        if point.table == "coil":
            bits.setdefault(key, [False] * TABLE_SIZE)[point.address] = bool(point.value)
        else:
            encoded = encode(point.value, point.type, point.order)  # type: ignore[arg-type]
            image = registers.setdefault(key, [0] * TABLE_SIZE)
            image[point.address : point.address + point.width] = encoded
    server = SimulatedModbusServer(port, host=HOST, unit_ids=UNITS)
    server.start()
    try:
        for (unit, table), values in [*registers.items(), *bits.items()]:
            server.set_registers(table, 0, values, unit)  # type: ignore[arg-type]
        print(f"READY {port}", flush=True)
        stopped.wait()
    finally:
        server.stop()
    return 0


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """Counters a subject advances as it polls."""

    polls: int = 0  # one unit's points read once (agent), or the whole plan once (bare)
    requests: int = 0
    points: int = 0
    bad: int = 0  # BAD samples (agent), points of failed requests (bare)


async def measure(
    snapshot: Callable[[], Tally], duration: float, warmup: float, alive: Callable[[], None]
) -> dict[str, Any]:
    """Wait out the warm-up, then count what `snapshot()` advances by in `duration` seconds."""
    await asyncio.sleep(warmup)
    alive()
    print("BEGIN", flush=True)
    before, cpu_before, began = snapshot(), time.process_time(), time.monotonic()
    await asyncio.sleep(duration)
    after, cpu_after, ended = snapshot(), time.process_time(), time.monotonic()
    alive()
    return {
        "window_s": ended - began,
        "cpu_s": cpu_after - cpu_before,
        **{key: value - getattr(before, key) for key, value in asdict(after).items()},
    }


def stop_when_done(tasks: Sequence[asyncio.Task[None]]) -> Callable[[], None]:
    """A check that raises the error of a polling task that ended early."""

    def check() -> None:
        for task in tasks:
            if task.done():
                error = task.exception()
                raise RuntimeError(f"a polling task stopped: {error!r}")

    return check


# -- the agent's driver ------------------------------------------------------------------------


async def run_agent(port: int, duration: float, warmup: float) -> dict[str, Any]:
    from agent.model import Quality, Sample
    from agent.settings import ModbusTcpDevice
    from drivers.modbus.client import ModbusDriver
    from drivers.modbus.line import ModbusLines

    points = workload()
    expected = {point.id: point.value for point in points}
    devices = [ModbusTcpDevice.model_validate(device_config(unit, port, points)) for unit in UNITS]
    lines = ModbusLines()
    line = lines.for_device(devices[0])
    drivers = [ModbusDriver(device, lines.for_device(device)) for device in devices]
    if any(driver.line is not line for driver in drivers):
        raise AssertionError("the 4 units do not share one line")
    for driver in drivers:
        await driver.connect()
    plan_requests = sum(len(driver.plan(driver.device.points)) for driver in drivers)

    tally = Tally()
    stop = asyncio.Event()
    last: dict[str, list[Sample]] = {}
    quality_of = operator.itemgetter(2)
    good = Quality.GOOD

    async def poll(driver: ModbusDriver) -> None:
        device_points = driver.device.points
        name = driver.device.name
        while not stop.is_set():
            samples = await driver.read(device_points)
            tally.polls += 1
            tally.points += len(samples)
            tally.bad += len(samples) - list(map(quality_of, samples)).count(good)
            last[name] = samples

    def snapshot() -> Tally:
        return Tally(tally.polls, line.requests, tally.points, tally.bad)

    tasks = [asyncio.create_task(poll(driver)) for driver in drivers]
    try:
        result = await measure(snapshot, duration, warmup, stop_when_done(tasks))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        lines.close()

    # Correctness, outside the window: the last poll of every unit against the served values.
    mismatches: list[str] = []
    checked = 0
    for samples in last.values():
        for sample in samples:
            checked += 1
            if sample.quality is not good or sample.value != expected[sample.point]:
                mismatches.append(
                    f"{sample.point}: {sample.value!r} ({sample.quality.value}, "
                    f"{sample.reason}), expected {expected[sample.point]!r}"
                )
    result.update(
        plan_requests=plan_requests,
        plan_requests_after=sum(len(driver.plan(driver.device.points)) for driver in drivers),
        checked=checked,
        mismatches=len(mismatches),
        mismatch_examples=mismatches[:5],
    )
    return result


# -- bare pymodbus -----------------------------------------------------------------------------


async def run_bare(
    port: int, plan: Sequence[Sequence[Any]], duration: float, warmup: float
) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient(HOST, port=port, timeout=TIMEOUT_S, retries=0)
    if not await client.connect():
        raise RuntimeError(f"cannot connect to the Modbus server {HOST}:{port}")
    functions: dict[str, Callable[..., Any]] = {
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
        "input": client.read_input_registers,
        "holding": client.read_holding_registers,
    }
    calls = [
        (
            functions[table],
            start,
            count,
            unit,
            points,
            table in ("coil", "discrete"),
            struct.Struct(fmt).unpack if fmt else None,
            struct.Struct(f">{count}H").pack,
        )
        for unit, table, start, count, points, fmt in plan
    ]
    tally = Tally()
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            for read, start, count, unit, points, bits, unpack, pack in calls:
                response = await read(start, count=count, device_id=unit)
                tally.requests += 1
                tally.points += points
                if response.isError():
                    tally.bad += points
                elif bits:
                    _values = response.bits[:count]
                else:
                    _values = unpack(pack(*response.registers))
            tally.polls += 1

    def snapshot() -> Tally:
        return Tally(tally.polls, tally.requests, tally.points, tally.bad)

    tasks = [asyncio.create_task(poll())]
    try:
        result = await measure(snapshot, duration, warmup, stop_when_done(tasks))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        client.close()
    result["plan_requests"] = len(plan)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("subject", choices=("serve", "agent", "bare"))
    parser.add_argument("port", type=int)
    parser.add_argument("plan", nargs="?", type=Path, help="bare: the requests, as JSON")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.subject == "serve":
        return serve(args.port)

    async def run() -> dict[str, Any]:
        async with asyncio.timeout(args.warmup + args.duration + OVERRUN_S):
            if args.subject == "agent":
                return await run_agent(args.port, args.duration, args.warmup)
            if args.plan is None:
                parser.error("bare needs the PLAN file")
            plan = json.loads(args.plan.read_text(encoding="utf-8"))
            return await run_bare(args.port, plan, args.duration, args.warmup)

    print("RESULT " + json.dumps(asyncio.run(run())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
