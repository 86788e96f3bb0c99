"""`shopfloor read`: one-shot reads for commissioning, with the raw registers beside the value."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from agent.settings import Config, ModbusDevice, ModbusPoint
from agent.transforms import scaled
from drivers.base import NotConnected
from drivers.modbus.client import ModbusDriver

__all__ = ["read_points"]


async def read_points(config: Config, point_ids: Sequence[str]) -> int:
    """Read the named points, print a table, and return 0 if every one was GOOD."""
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
    for point_id in point_ids:
        device = known[point_id]
        devices[device.name] = device
        wanted.setdefault(device.name, []).extend(p for p in device.points if p.id == point_id)

    table = Table(title="shopfloor read", show_lines=False)
    for column in ("point", "address", "type", "value", "quality", "raw"):
        table.add_column(column)
    all_good = True
    for name, points in wanted.items():
        driver = ModbusDriver(devices[name])
        try:
            await driver.connect()
            results = await driver.read_blocks(points)
        except NotConnected as exc:
            all_good = False
            for point in points:
                table.add_row(point.id, point.address, point.value_type, "", "bad", str(exc))
            continue
        finally:
            await driver.close()
        for result in results:
            for point, sample in zip(result.block.points, driver.decode_block(result), strict=True):
                offset = point.register - result.block.start
                if result.registers is not None:
                    raw = " ".join(
                        f"{register:04X}"
                        for register in result.registers[offset : offset + point.width]
                    )
                elif result.bits is not None:
                    raw = str(int(result.bits[offset]))
                else:
                    raw = ""
                value = scaled(sample.value, point.scale, point.offset)
                quality = sample.quality.value + (f" ({sample.reason})" if sample.reason else "")
                all_good = all_good and sample.reason is None
                unit = f" {point.unit}" if point.unit else ""
                table.add_row(
                    point.id,
                    point.address,
                    f"{point.value_type} {point.order}" if point.width > 1 else point.value_type,
                    f"{value}{unit}" if value is not None else "",
                    quality,
                    raw,
                )
    Console().print(table)
    return 0 if all_good else 1
