"""`shopfloor read`: one-shot reads for commissioning, with the raw registers beside the value.

With `--all-orders`, each register point is also decoded in the other byte and word orders,
side by side, so the one that matches the device's display can be picked.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.model import Quality, Sample, Value, now_ms
from agent.settings import Config, ModbusDevice, ModbusPoint, OpcUaDevice, OpcUaPoint, WordOrder
from agent.transforms import scaled
from drivers.base import NotConnected
from drivers.modbus.client import ModbusDriver
from drivers.modbus.codec import decode, decode_string, registers_to_bytes

__all__ = ["decode_all_orders", "read_points"]

ORDERS: tuple[WordOrder, ...] = ("ABCD", "CDAB", "BADC", "DCBA")
# For 16-bit values only the byte order counts: these orders read like the one they name.
_SAME_AS_16_BIT: dict[WordOrder, WordOrder] = {"CDAB": "ABCD", "DCBA": "BADC"}
_MARK = " *"


@dataclass(frozen=True, slots=True)
class _Reading:
    """What one point gave: its own registers (or bit) and the decoded value, or an error."""

    point: ModbusPoint
    registers: list[int] | None
    bit: bool | None
    value: Value
    error: str | None

    @property
    def raw(self) -> str:
        """The registers in hex as they came off the wire, or the bit as 0 or 1."""
        if self.registers is not None:
            return " ".join(f"{register:04X}" for register in self.registers)
        if self.bit is not None:
            return str(int(self.bit))
        return ""


async def read_points(config: Config, point_ids: Sequence[str], *, all_orders: bool = False) -> int:
    """Read the named points, print a table, and return 0 if every one was GOOD.

    With `all_orders`, the table shows each register point decoded in all four orders.
    """
    wanted: dict[str, list[ModbusPoint]] = {}
    devices: dict[str, ModbusDevice] = {}
    known = {point.id: device for device in config.devices for point in device.points}
    unknown = [point_id for point_id in point_ids if point_id not in known]
    for point_id in unknown:
        close = difflib.get_close_matches(point_id, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(f"Unknown point {point_id}{hint}", file=sys.stderr)
    if unknown:
        return 2
    opcua: dict[str, list[OpcUaPoint]] = {}
    opcua_devices: dict[str, OpcUaDevice] = {}
    for point_id in dict.fromkeys(point_ids):
        device = known[point_id]
        if isinstance(device, OpcUaDevice):
            opcua_devices[device.name] = device
            opcua.setdefault(device.name, []).extend(
                p for p in device.points if p.id == point_id and isinstance(p, OpcUaPoint)
            )
            continue
        devices[device.name] = device
        wanted.setdefault(device.name, []).extend(
            p for p in device.points if p.id == point_id and isinstance(p, ModbusPoint)
        )

    all_good = True
    if wanted:
        readings: dict[str, _Reading] = {}
        for name, points in wanted.items():
            for reading in await _read_device(devices[name], points):
                readings[reading.point.id] = reading
        ordered = [readings[p] for p in dict.fromkeys(point_ids) if p in readings]
        Console().print(_orders_table(ordered) if all_orders else _values_table(ordered))
        all_good = all(reading.error is None for reading in ordered)
    if opcua:
        samples: list[tuple[OpcUaPoint, Sample]] = []
        for name, opcua_points in opcua.items():
            samples += await _read_opcua(
                opcua_devices[name], opcua_points, config.agent.data_dir / "pki"
            )
        Console().print(_opcua_table(samples))
        all_good = all_good and all(sample.quality is Quality.GOOD for _, sample in samples)
    return 0 if all_good else 1


async def _read_opcua(
    device: OpcUaDevice, points: list[OpcUaPoint], pki_dir: Path
) -> list[tuple[OpcUaPoint, Sample]]:
    """One session, one Read request for the points (a polling read in any mode)."""
    # asyncua: only when OPC UA points are read
    from drivers.opcua.client import OpcUaDriver
    from drivers.opcua.security import Pki

    driver = OpcUaDriver(device.model_copy(update={"mode": "polling"}), Pki(pki_dir))
    try:
        await driver.connect()
        samples = await driver.read(points)
    except NotConnected as exc:
        samples = [Sample(point.id, None, Quality.BAD, now_ms(), str(exc)) for point in points]
    finally:
        await driver.close()
    return list(zip(points, samples, strict=True))


def _opcua_table(samples: Sequence[tuple[OpcUaPoint, Sample]]) -> Table:
    table = Table(title="shopfloor read (OPC UA)")
    for column in ("point", "node", "value", "quality", "source time (UTC)"):
        table.add_column(column)
    for point, sample in samples:
        value = scaled(sample.value, point.scale, point.offset)
        unit = f" {point.unit}" if point.unit and value is not None else ""
        quality = sample.quality.value + (f" ({sample.reason})" if sample.reason else "")
        when = dt.datetime.fromtimestamp(sample.ts / 1000, dt.UTC)
        when_text = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        shown = "" if value is None else f"{value}{unit}"
        _add_row(table, point.id, point.node, shown, quality, when_text)
    return table


async def _read_device(device: ModbusDevice, points: list[ModbusPoint]) -> list[_Reading]:
    """One connection, the points' requests, and what each point got."""
    driver = ModbusDriver(device)
    try:
        await driver.connect()
        results = await driver.read_blocks(points)
    except NotConnected as exc:
        return [_Reading(point, None, None, None, str(exc)) for point in points]
    finally:
        await driver.close()
    readings: list[_Reading] = []
    for result in results:
        for point, sample in zip(result.block.points, driver.decode_block(result), strict=True):
            offset = point.register - result.block.start
            registers = bit = None
            if result.registers is not None:
                registers = result.registers[offset : offset + point.width]
            elif result.bits is not None:
                bit = result.bits[offset]
            readings.append(_Reading(point, registers, bit, sample.value, sample.reason))
    return readings


def _add_row(table: Table, *cells: str) -> None:
    # Text, not markup: a device's string or a point id may contain [brackets].
    table.add_row(*(Text(cell) for cell in cells))


def _type_label(point: ModbusPoint) -> str:
    return f"{point.value_type} {point.order}" if point.width > 1 else point.value_type


def _values_table(readings: Sequence[_Reading]) -> Table:
    table = Table(title="shopfloor read", show_lines=False)
    for column in ("point", "address", "type", "value", "quality", "raw"):
        table.add_column(column)
    for reading in readings:
        point = reading.point
        value = scaled(reading.value, point.scale, point.offset)
        unit = f" {point.unit}" if point.unit else ""
        if reading.error is not None:
            quality, raw = f"bad ({reading.error})", reading.raw
        else:
            quality, raw = "good", reading.raw
        _add_row(
            table,
            point.id,
            point.protocol_address,
            _type_label(point),
            f"{value}{unit}" if value is not None else "",
            quality,
            raw,
        )
    return table


def _format(value: Value, point: ModbusPoint) -> str:
    """A value for side-by-side comparison: float32 to the 7 digits it carries."""
    shown = scaled(value, point.scale, point.offset)
    if isinstance(shown, float) and math.isfinite(shown) and point.value_type == "float32":
        return f"{shown:.7g}"
    return str(shown)


def decode_all_orders(point: ModbusPoint, registers: Sequence[int]) -> dict[WordOrder, str]:
    """The point's registers decoded in each order, scaled, as text; empty where not applicable.

    16-bit numbers have two byte orders: CDAB and DCBA say which one they read like. Strings
    come as sent (ABCD) and with the two bytes of each register swapped (BADC, `byte_swap`).
    """
    value_type = point.value_type
    if value_type == "bool" or len(registers) != point.width:
        return {}
    if value_type == "string":
        data = registers_to_bytes(registers)
        length = point.length or 0
        # Quoted, so that an empty string or trailing spaces show.
        return {
            "ABCD": json.dumps(decode_string(data)[:length], ensure_ascii=False),
            "BADC": json.dumps(decode_string(data, byte_swap=True)[:length], ensure_ascii=False),
        }
    if point.width == 1:
        return {
            order: f"= {_SAME_AS_16_BIT[order]}"
            if order in _SAME_AS_16_BIT
            else _format(decode(registers, value_type, order), point)
            for order in ORDERS
        }
    return {order: _format(decode(registers, value_type, order), point) for order in ORDERS}


def _configured_order(point: ModbusPoint) -> WordOrder | None:
    if point.value_type == "bool":
        return None
    if point.value_type == "string":
        return "BADC" if point.byte_swap else "ABCD"
    return point.order


def _orders_table(readings: Sequence[_Reading]) -> Table:
    table = Table(
        title="shopfloor read --all-orders",
        caption=f"{_MARK.strip()} the order in the configuration. Values include the point's "
        "scale and offset; 16-bit values have only two byte orders; strings show ABCD as sent "
        "and BADC byte-swapped.",
    )
    for column in ("point", "address", "type", "raw", *ORDERS, "unit"):
        table.add_column(column)
    for reading in readings:
        point = reading.point
        if reading.registers is not None:
            # Shown even when the configured order gives a bad value (NaN, infinity): that is
            # when the other orders matter most.
            decoded = decode_all_orders(point, reading.registers)
            configured = _configured_order(point)
            cells = [
                decoded.get(order, "") + (_MARK if order == configured and decoded else "")
                for order in ORDERS
            ]
            if not decoded:  # a bit of a register: orders do not apply
                cells[0] = str(reading.value)
            raw = reading.raw
            if reading.error is not None:
                raw += f" (bad: {reading.error})"
        elif reading.error is not None:
            cells = ["", "", "", ""]
            raw = f"bad ({reading.error})"
        else:
            cells = [str(reading.value), "", "", ""]
            raw = reading.raw
        _add_row(
            table,
            point.id,
            point.protocol_address,
            _type_label(point),
            raw,
            *cells,
            point.unit or "",
        )
    return table
