"""Group a device's points into as few read requests as the protocol and device allow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.settings import ModbusPoint, ModbusTable

__all__ = ["ReadBlock", "plan_reads", "split_block"]


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One request: `count` registers (or bits) of `table` from `start`, and the points in it."""

    table: ModbusTable
    start: int
    count: int
    points: tuple[ModbusPoint, ...]


def plan_reads(
    points: Sequence[ModbusPoint], *, max_registers: int, max_bits: int, max_gap: int
) -> list[ReadBlock]:
    """Merge points of one table into blocks.

    A block grows while the next point fits within the per-request maximum and the unused
    registers between it and the block stay within `max_gap`. A point is never split across
    requests. Blocks come out ordered by table, then address.
    """
    blocks: list[ReadBlock] = []
    by_table: dict[str, list[ModbusPoint]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    for table in ("coil", "discrete", "input", "holding"):
        members = sorted(by_table.get(table, []), key=lambda p: (p.register, p.width))
        limit = max_bits if table in ("coil", "discrete") else max_registers
        current: list[ModbusPoint] = []
        start = end = 0
        for point in members:
            point_end = point.register + point.width  # exclusive
            if current and (point.register - end > max_gap or max(point_end, end) - start > limit):
                blocks.append(ReadBlock(table, start, end - start, tuple(current)))
                current = []
            if not current:
                start, end = point.register, point_end
            current.append(point)
            end = max(end, point_end)
        if current:
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks


def split_block(block: ReadBlock) -> list[ReadBlock]:
    """Two parts of a block the device rejected as a whole, each spanning only its points.

    The cut goes through the widest run of unused registers, where a device's map most likely
    has its hole; a block without unused registers is cut in the middle. Cutting again where
    a part is rejected finds the culprit in about log2(n) extra requests, and the parts that
    are accepted stay merged.
    """
    members = sorted(block.points, key=lambda p: (p.register, p.width))
    cut, widest = len(members) // 2, 0
    end = members[0].register + members[0].width
    for index, point in enumerate(members[1:], start=1):
        gap = point.register - end
        if gap > widest:
            cut, widest = index, gap
        end = max(end, point.register + point.width)
    parts = []
    for part in (members[:cut], members[cut:]):
        start = part[0].register
        stop = max(point.register + point.width for point in part)
        parts.append(ReadBlock(block.table, start, stop - start, tuple(part)))
    return parts
