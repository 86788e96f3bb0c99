"""Simulated Modbus devices: a press-line PLC and a three-phase power meter.

Each runs a real pymodbus server in a thread of its own, so the demo, the benchmark and the
tests talk to it exactly as to a real device, and can stop and restart it. Three transports:
Modbus TCP, RTU frames over TCP (a serial-to-Ethernet converter) and RTU on a serial port
(a pseudo-terminal from `drivers.simulate.serial_line` in tests).

Register maps (0-based protocol addresses) are in `PRESS_LINE_MAP` and `METER_MAP`; the meter
follows the Eastron SDM630 input-register layout so a future SDM630 profile reads it as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar, cast

from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.settings import ModbusTable, ModbusType, WordOrder
from drivers.modbus.codec import encode
from drivers.simulate.threaded import ThreadedServer

__all__ = [
    "METER_MAP",
    "PRESS_LINE_MAP",
    "SimulatedModbusServer",
    "SimulatedPoint",
    "Transport",
    "meter_model",
    "press_line_model",
]

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

T = TypeVar("T")

_FUNCTION_CODE: dict[str, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
# pymodbus builds its simulated tables in quadratic time: 2,000 entries take 0.05 s, 10,000
# take 2.4 s of CPU with the GIL held, enough to starve a second simulator in the same process.
_TABLE_SIZE = 2_000
_GATEWAY_TARGET_FAILED = 11

Transport = Literal["tcp", "rtu_tcp", "rtu"]
"""Modbus TCP, RTU frames over a TCP socket, or RTU on a serial port."""

Parity = Literal["N", "E", "O"]

SimulatedPoint = tuple[str, ModbusTable, int, ModbusType, WordOrder, str]
"""(name, table, address, type, order, unit): one entry of a simulated register map."""

PRESS_LINE_MAP: list[SimulatedPoint] = [
    ("state", "holding", 0, "uint16", "ABCD", "0 off, 1 idle, 2 producing, 3 fault"),
    ("parts_total", "holding", 1, "uint32", "ABCD", "parts"),
    ("strokes_per_min", "holding", 3, "int16", "ABCD", "1/min"),
    ("oil_temp", "holding", 10, "float32", "ABCD", "degC"),
    ("die_temp", "holding", 12, "float32", "CDAB", "degC"),
    ("pressure", "holding", 14, "float32", "ABCD", "bar"),
    ("motor_current_x10", "holding", 16, "uint16", "ABCD", "0.1 A"),
    ("ambient_temp_x100", "input", 0, "int16", "ABCD", "0.01 degC"),
    ("running", "coil", 0, "bool", "ABCD", ""),
    ("door_closed", "discrete", 0, "bool", "ABCD", ""),
]

METER_MAP: list[SimulatedPoint] = [
    ("voltage_l1", "input", 0, "float32", "ABCD", "V"),
    ("voltage_l2", "input", 2, "float32", "ABCD", "V"),
    ("voltage_l3", "input", 4, "float32", "ABCD", "V"),
    ("current_l1", "input", 6, "float32", "ABCD", "A"),
    ("current_l2", "input", 8, "float32", "ABCD", "A"),
    ("current_l3", "input", 10, "float32", "ABCD", "A"),
    ("power_l1", "input", 12, "float32", "ABCD", "W"),
    ("power_l2", "input", 14, "float32", "ABCD", "W"),
    ("power_l3", "input", 16, "float32", "ABCD", "W"),
    ("power_total", "input", 52, "float32", "ABCD", "W"),
    ("frequency", "input", 70, "float32", "ABCD", "Hz"),
    ("energy_import", "input", 72, "float32", "ABCD", "kWh"),
]

Model = Callable[[float], dict[str, float]]
"""Maps seconds since the simulator started to the value of every named point."""


def press_line_model(seed: int = 7) -> Model:
    """A hydraulic press: producing most of the time, idle now and then, warming up slowly."""
    rng = random.Random(seed)
    parts = 0
    last_part_at = 0.0

    def values(t: float) -> dict[str, float]:
        nonlocal parts, last_part_at
        cycle = t % 120
        state = 1 if cycle > 100 else 2
        strokes = 20 if state == 2 else 0
        if state == 2 and t - last_part_at >= 60 / strokes:
            parts += 1
            last_part_at = t
        warm = 1 - math.exp(-t / 600)
        return {
            "state": state,
            "parts_total": parts,
            "strokes_per_min": strokes,
            "oil_temp": round(35 + 15 * warm + 0.8 * math.sin(t / 17) + rng.gauss(0, 0.05), 2),
            "die_temp": round(60 + 40 * warm + 2 * math.sin(t / 23), 2),
            "pressure": round((180 if state == 2 else 20) + rng.gauss(0, 1.5), 1),
            "motor_current_x10": int((42 if state == 2 else 8) * 10 + rng.gauss(0, 3)),
            "ambient_temp_x100": int(2150 + 150 * math.sin(t / 300)),
            "running": 1.0 if state == 2 else 0.0,
            "door_closed": 1.0,
        }

    return values


def meter_model(seed: int = 11) -> Model:
    """A three-phase meter feeding the press: power follows its duty cycle, energy integrates."""
    rng = random.Random(seed)
    energy_kwh = 12_345.0
    last_t = 0.0

    def values(t: float) -> dict[str, float]:
        nonlocal energy_kwh, last_t
        producing = (t % 120) <= 100
        result: dict[str, float] = {"frequency": round(50 + rng.gauss(0, 0.01), 3)}
        total = 0.0
        for phase in (1, 2, 3):
            voltage = 230 + rng.gauss(0, 0.8)
            current = (18.0 if producing else 3.5) + rng.gauss(0, 0.3)
            power = voltage * current * 0.92
            result[f"voltage_l{phase}"] = round(voltage, 2)
            result[f"current_l{phase}"] = round(current, 3)
            result[f"power_l{phase}"] = round(power, 1)
            total += power
        result["power_total"] = round(total, 1)
        energy_kwh += total * (t - last_t) / 3_600_000
        last_t = t
        result["energy_import"] = energy_kwh
        return result

    return values


class SimulatedModbusServer(ThreadedServer):
    """A real Modbus server whose registers a model (or a test) writes.

    `transport` picks the wire: "tcp" serves Modbus TCP on `host:port`; "rtu_tcp" serves RTU
    frames on `host:port`, as a serial-to-Ethernet converter forwards them; "rtu" serves RTU on
    the serial device `serial_port` at `baudrate`, `bytesize`, `parity` and `stopbits`. With
    port 0 the OS picks a free TCP port: `port` holds it once started, and restarts keep it.

    Every unit id in `unit_ids` has its own four tables of 2,000 entries at addresses 0-1,999,
    plus the `extra_ranges` given as (table, first address, count): a meter whose registers sit
    at 19000 or a device map with holes. Addresses outside them are answered "illegal data
    address", as a real device answers for registers it does not have.
    A request for any other unit gets no answer at all, like a device that is switched off or
    absent from the bus: the client times out. `start()` and `stop()` may be called repeatedly
    to simulate a device going away; register contents survive it.
    """

    thread_name = "modbus-sim"

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        unit_ids: Sequence[int] = (1,),
        register_map: Sequence[SimulatedPoint] = (),
        model: Model | None = None,
        tick: float = 0.1,
        extra_ranges: Sequence[tuple[ModbusTable, int, int]] = (),
        transport: Transport = "tcp",
        serial_port: str | None = None,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: Parity = "N",
        stopbits: int = 1,
        unreachable_behind_gateway: Sequence[int] = (),
    ) -> None:
        _check_transport(transport, serial_port, unit_ids)
        super().__init__()
        self.host = host
        self.port = port
        self.unit_ids = tuple(unit_ids)
        self.register_map = {entry[0]: entry for entry in register_map}
        self.model = model
        self.tick = tick
        self.ranges: dict[str, list[tuple[int, int]]] = {
            table: _merge([(0, _TABLE_SIZE)] + [(a, n) for t, a, n in extra_ranges if t == table])
            for table in _FUNCTION_CODE
        }
        self.transport: Transport = transport
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.bytesize = bytesize
        self.parity: Parity = parity
        self.stopbits = stopbits
        # Units this server answers for as a gateway whose serial device is gone: every request
        # gets exception 11, "gateway target device failed to respond".
        self.unreachable_behind_gateway = tuple(unreachable_behind_gateway)
        self._gateway_requests: dict[int, int] = {}
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        # Register contents survive stop/start like a real device's memory.
        self._memory: dict[tuple[int, str, int], list[int] | list[bool]] = {}

    def describe(self) -> str:
        """Where it serves, e.g. `Modbus RTU on /dev/pts/3 (9600 8N1)`."""
        if self.transport == "rtu":
            frame = f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"
            return f"Modbus RTU on {self.serial_port} ({frame})"
        name = "Modbus RTU over TCP" if self.transport == "rtu_tcp" else "Modbus TCP"
        return f"{name} on {self.host}:{self.port}"

    def set_registers(
        self, table: ModbusTable, address: int, values: list[int] | list[bool], unit: int = 1
    ) -> None:
        """Write raw registers (or bits) into the memory of one unit."""
        self._check_unit(unit)
        self._call(self._set(unit, table, address, values))

    def get_registers(
        self, table: ModbusTable, address: int, count: int, unit: int = 1
    ) -> list[int] | list[bool]:
        """Read raw registers (or bits) from the memory of one unit."""
        self._check_unit(unit)
        assert self._server is not None
        return self._call(self._server.async_getValues(unit, _FUNCTION_CODE[table], address, count))

    def set_value(
        self,
        table: ModbusTable,
        address: int,
        value: float,
        value_type: ModbusType,
        *,
        order: WordOrder = "ABCD",
        unit: int = 1,
    ) -> None:
        """Encode a typed value as a reader with the same type and order expects it."""
        if table in ("coil", "discrete"):
            self.set_registers(table, address, [bool(value)], unit)
        else:
            self.set_registers(table, address, encode(value, value_type, order), unit)

    # -- the server thread ---------------------------------------------------------------------

    def _check_unit(self, unit: int) -> None:
        if unit not in self.unit_ids:
            units = ", ".join(map(str, self.unit_ids))
            raise ValueError(f"unit {unit} is not simulated here (units {units})")

    def _make_server(self, devices: list[SimDevice]) -> ModbusTcpServer | ModbusSerialServer:
        # pymodbus's hint says the hook returns a PDU; returning None drops the request.
        drop_other_units = cast(Callable[[bool, ModbusPDU], ModbusPDU], self._drop_other_units)
        if self.transport == "rtu":
            assert self.serial_port is not None
            # pyserial empties the port's input queue on open, so requests sent while the
            # device was off are not answered late, paired with the client's next request.
            return ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
                trace_pdu=drop_other_units,
            )
        return ModbusTcpServer(
            devices,
            framer=FramerType.RTU if self.transport == "rtu_tcp" else FramerType.SOCKET,
            address=(self.host, self.port),
            trace_pdu=drop_other_units,
        )

    def _drop_other_units(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        """pymodbus's PDU hook: requests for units this device lacks are never answered.

        Without it pymodbus answers them with an exception, which no absent device does.
        """
        if sending:
            unit = self._gateway_requests.pop(pdu.transaction_id, None)
            if unit is None:
                return pdu
            return ExceptionResponse(
                pdu.function_code & 0x7F, _GATEWAY_TARGET_FAILED, unit, pdu.transaction_id
            )
        if pdu.dev_id in self.unreachable_behind_gateway:
            # Served by a real unit, then its answer is replaced by the gateway's exception.
            self._gateway_requests[pdu.transaction_id] = pdu.dev_id
            pdu.dev_id = self.unit_ids[0]
            return pdu
        if pdu.dev_id in self.unit_ids:
            return pdu
        return None

    async def _serve(self) -> None:
        assert self._stopping is not None
        devices = [
            SimDevice(
                id=unit,
                simdata=(
                    self._simdata("coil", False, DataType.BITS),
                    self._simdata("discrete", False, DataType.BITS),
                    self._simdata("holding", 0, DataType.REGISTERS),
                    self._simdata("input", 0, DataType.REGISTERS),
                ),
            )
            for unit in self.unit_ids
        ]
        server = self._make_server(devices)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus hides the OSError behind "could not listen"
            why = (
                "no such serial device, or another program has it open"
                if self.transport == "rtu"
                else "the port is in use, or the address is not one of this machine's"
            )
            raise OSError(f"cannot serve {self.describe()}: {why}") from exc
        if self.transport != "rtu" and self.port == 0:
            listener = cast(asyncio.Server, server.transport)
            self.port = int(listener.sockets[0].getsockname()[1])
        self._server = server
        for (unit, table, start), values in self._memory.items():
            await server.async_setValues(unit, _FUNCTION_CODE[table], start, values)
        self._ready()
        began = time.monotonic()
        try:
            while not self._stopping.is_set():
                if self.model is not None:
                    await self._apply_model(self.model(time.monotonic() - began))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.tick)
            for unit in self.unit_ids:
                for table, function_code in _FUNCTION_CODE.items():
                    for start, count in self.ranges[table]:
                        self._memory[(unit, table, start)] = await server.async_getValues(
                            unit, function_code, start, count
                        )
        finally:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus lacks the hint
            self._server = None

    def _simdata(self, table: str, initial: bool | int, datatype: DataType) -> list[SimData]:
        return [
            SimData(start, count=count, values=initial, datatype=datatype)
            for start, count in self.ranges[table]
        ]

    async def _apply_model(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            entry = self.register_map.get(name)
            if entry is None:
                continue
            _name, table, address, value_type, order, _unit = entry
            for unit in self.unit_ids:
                if table in ("coil", "discrete"):
                    await self._set(unit, table, address, [bool(value)])
                else:
                    await self._set(unit, table, address, encode(value, value_type, order))

    async def _set(
        self, unit: int, table: ModbusTable, address: int, values: list[int] | list[bool]
    ) -> None:
        assert self._server is not None
        await self._server.async_setValues(unit, _FUNCTION_CODE[table], address, values)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, count) ranges sorted, with overlapping or adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for start, count in sorted(ranges):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            first, first_count = merged[-1]
            merged[-1] = (first, max(first_count, start + count - first))
        else:
            merged.append((start, count))
    return merged


def _check_transport(transport: str, serial_port: str | None, unit_ids: Sequence[int]) -> None:
    if transport not in ("tcp", "rtu_tcp", "rtu"):
        raise ValueError(f"transport {transport!r} is not one of tcp, rtu_tcp, rtu")
    if transport == "rtu" and not serial_port:
        raise ValueError("transport 'rtu' needs serial_port, e.g. /dev/ttyUSB0")
    if not unit_ids or len(set(unit_ids)) != len(unit_ids):
        raise ValueError(f"unit_ids must be distinct and not empty: {list(unit_ids)}")
    # On a serial bus 0 is the broadcast address and 248-255 are reserved.
    lowest, highest = (1, 247) if transport != "tcp" else (0, 255)
    if not all(lowest <= unit <= highest for unit in unit_ids):
        raise ValueError(f"unit ids on {transport} must be {lowest}-{highest}: {list(unit_ids)}")


SimulatorKind = Literal["press-line", "meter"]


def build_simulator(
    kind: SimulatorKind,
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    transport: Transport = "tcp",
    serial_port: str | None = None,
    baudrate: int = 9600,
    unit_ids: Sequence[int] = (1,),
) -> SimulatedModbusServer:
    """The press-line PLC or the meter, ready to `start()`; every unit follows the same model."""
    register_map, model = (
        (PRESS_LINE_MAP, press_line_model()) if kind == "press-line" else (METER_MAP, meter_model())
    )
    return SimulatedModbusServer(
        port,
        host=host,
        register_map=register_map,
        model=model,
        transport=transport,
        serial_port=serial_port,
        baudrate=baudrate,
        unit_ids=unit_ids,
    )
