"""`shopfloor scan`: which Modbus units answer on a line, and which addresses they let be read.

A scan only ever reads (function codes 1 to 4); it writes nothing to any device.

1. Unit ids: each unit is asked for holding register 0. Any answer proves the unit is there,
   a Modbus exception included ("illegal data address" is an answer), except exceptions 10
   and 11, with which a gateway says that nothing answers behind it.
2. Tables: for each unit that answered, the four tables are read in blocks of 125 registers or
   2,000 bits up to the highest address asked for. A block refused with "illegal data address"
   (or "illegal data value", which some devices answer for long requests) is cut in halves, down
   to `resolution` registers (16 times as many bits: the same size of answer), and the edges of
   every readable range are then found to the exact address by a binary search. Units that
   never answer or answer with "illegal function" cost few requests: a table is given up after
   "illegal function" or three failed requests in a row.

Ranges shorter than about twice the resolution, in the middle of unreadable space, can be
missed; `--resolution 1` over a narrow `--max-address` finds every single register.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.settings import (
    ModbusDevice,
    ModbusRtuDevice,
    ModbusRtuOverTcpDevice,
    ModbusTable,
    ModbusTcpDevice,
)
from drivers.base import NotConnected
from drivers.modbus.client import EXCEPTION_NAMES
from drivers.modbus.line import ModbusLine

__all__ = [
    "DEFAULT_MAX_ADDRESS",
    "DEFAULT_TCP_UNITS",
    "SERIAL_UNITS",
    "Answer",
    "ScanError",
    "ScanOptions",
    "ScanReport",
    "TableScan",
    "UnitScan",
    "format_units",
    "parse_target",
    "parse_units",
    "print_report",
    "scan",
    "scan_command",
    "starter_config",
]

TABLES: tuple[ModbusTable, ...] = ("coil", "discrete", "input", "holding")
_READ_FUNCTION = {
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
    "input": "read_input_registers",
    "holding": "read_holding_registers",
}
# The largest request the protocol allows: 125 registers, 2,000 bits.
_BLOCK = {"coil": 2000, "discrete": 2000, "input": 125, "holding": 125}
_BITS_PER_REGISTER = 16

_ILLEGAL_FUNCTION = 1
# Refusals that depend on the addresses asked for, so smaller requests may succeed.
_RANGE_REFUSALS = (2, 3)
# A gateway answering for a unit behind it that is not there.
_GATEWAY_ABSENT = (10, 11)
_FAILURES_BEFORE_GIVING_UP = 3

DEFAULT_MAX_ADDRESS = 9999
DEFAULT_RESOLUTION = 32
DEFAULT_MAX_REQUESTS = 2000
# A Modbus TCP device normally answers on unit 1, or on 255 (the "no unit" value of the TCP
# spec); a TCP-to-serial gateway forwards the unit id to its bus, where devices are usually
# numbered from 1. Every absent unit costs a timeout, hence not 0-255 by default.
DEFAULT_TCP_UNITS: tuple[int, ...] = (*range(1, 11), 255)
# On a serial bus any address 1-247 may be set on a device (0 is broadcast, 248-255 reserved).
SERIAL_UNITS: tuple[int, ...] = tuple(range(1, 248))

_EXAMPLES_PER_RANGE = 3
_RANGES_WITH_EXAMPLES = 10
_RANGES_SHOWN = 12


class ScanError(Exception):
    """The scan cannot start or cannot go on; the message is one sentence for the user."""


class _Interrupted(Exception):
    """Ctrl-C: stop at the next request and report what was found."""


@dataclass(frozen=True, slots=True)
class Answer:
    """How a unit answered one read request: data, a Modbus exception, or nothing in time."""

    data: bool
    exception: int | None = None

    @property
    def silent(self) -> bool:
        """Nothing came back within the timeout."""
        return not self.data and self.exception is None

    def describe(self) -> str:
        """`data`, `no answer` or `exception 2 (illegal data address)`."""
        if self.data:
            return "data"
        if self.exception is None:
            return "no answer"
        name = EXCEPTION_NAMES.get(self.exception, "unknown exception")
        return f"exception {self.exception} ({name})"


_DATA = Answer(data=True)
_SILENT = Answer(data=False)


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """What to scan and how hard to try."""

    device: ModbusDevice  # the line (transport, address, timeout); unit_id and points unused
    units: tuple[int, ...]
    max_address: int = DEFAULT_MAX_ADDRESS  # highest 0-based address probed
    resolution: int = DEFAULT_RESOLUTION  # smallest refused block, in registers, cut in halves
    max_requests: int = DEFAULT_MAX_REQUESTS  # per unit, for the tables


@dataclass(slots=True)
class TableScan:
    """What one table of one unit let be read."""

    table: ModbusTable
    ranges: list[tuple[int, int]] = field(default_factory=list)  # [start, stop), merged at the end
    stopped: str | None = None  # why probing stopped before the end, if it did
    failures: int = 0  # failed requests in a row (no answer, or refusals other than 2 and 3)

    @property
    def size(self) -> int:
        """Readable addresses in all ranges."""
        return sum(stop - start for start, stop in self.ranges)


@dataclass(slots=True)
class UnitScan:
    """A unit that answered, and what it let be read."""

    unit: int
    first_answer: Answer
    tables: dict[ModbusTable, TableScan] = field(
        default_factory=lambda: {table: TableScan(table) for table in TABLES}
    )
    requests: int = 0
    budget_reached: bool = False
    complete: bool = False

    @property
    def readable(self) -> bool:
        """Whether any table has a readable range."""
        return any(table.ranges for table in self.tables.values())

    def layout(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """The ranges of all four tables, to compare units."""
        return tuple(tuple(self.tables[table].ranges) for table in TABLES)


@dataclass(slots=True)
class ScanReport:
    """Everything a scan found so far; filled as it goes, so an interrupted scan keeps it."""

    options: ScanOptions
    units: list[UnitScan] = field(default_factory=list)
    units_probed: int = 0
    requests: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    interrupted: bool = False
    error: str | None = None

    @property
    def elapsed(self) -> float:
        """Seconds from start to end (or to now while running)."""
        return (self.finished or time.monotonic()) - self.started


class ScanProgress(Protocol):
    """Where a scan reports its progress (a rich progress bar, or nothing)."""

    def begin(self, description: str, total: int) -> None:
        """A new phase with `total` steps."""

    def advance(self, steps: int) -> None:
        """`steps` more are done."""


class _NoProgress:
    def begin(self, description: str, total: int) -> None:
        pass

    def advance(self, steps: int) -> None:
        pass


# -- parsing the command line ------------------------------------------------------------------


def parse_units(text: str, *, lowest: int = 0, highest: int = 255) -> tuple[int, ...]:
    """`1-10,255` as (1, 2, ..., 10, 255); raises ValueError with a clear message."""
    units: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{text!r} is not a list of unit ids such as 1-10,255")
        low, high = int(first), int(last) if dash else int(first)
        if low > high:
            raise ValueError(f"unit range {part.strip()} runs backwards")
        if low < lowest or high > highest:
            raise ValueError(f"unit ids on this line go from {lowest} to {highest}, got {part}")
        units.update(range(low, high + 1))
    return tuple(sorted(units))


def format_units(units: Sequence[int]) -> str:
    """(1, 2, 3, 7, 255) as `1-3, 7, 255`."""
    parts: list[str] = []
    ordered = sorted(units)
    index = 0
    while index < len(ordered):
        end = index
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        first, last = ordered[index], ordered[end]
        parts.append(str(first) if first == last else f"{first}-{last}")
        index = end + 1
    return ", ".join(parts)


def parse_target(text: str, default_port: int = 502) -> tuple[str, int]:
    """`HOST`, `HOST:PORT` or `[IPv6]:PORT` as (host, port); raises ValueError."""
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"{text!r} names no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{port_text!r} is not a TCP port (1-65535)")
    return host, int(port_text)


def _line_settings(
    *,
    target: str | None,
    serial_port: str | None,
    rtu_over_tcp: bool,
    baudrate: int,
    parity: str,
    stopbits: int,
    timeout: float,
) -> ModbusDevice:
    """The line to scan as device settings, validated like a configuration file's."""
    # A placeholder point: device settings need one, and the scan never reads it.
    common: dict[str, Any] = {
        "name": "scan",
        "timeout": timeout,
        "points": [{"id": "scan", "address": "holding:0", "type": "uint16"}],
    }
    device: ModbusDevice
    try:
        if serial_port is not None:
            device = ModbusRtuDevice.model_validate(
                {
                    **common,
                    "driver": "modbus_rtu",
                    "serial_port": serial_port,
                    "baudrate": baudrate,
                    "parity": parity,
                    "stopbits": stopbits,
                }
            )
        else:
            assert target is not None
            host, port = parse_target(target)
            settings = {**common, "host": host, "port": port}
            if rtu_over_tcp:
                device = ModbusRtuOverTcpDevice.model_validate(
                    {**settings, "driver": "modbus_rtu_tcp"}
                )
            else:
                device = ModbusTcpDevice.model_validate({**settings, "driver": "modbus_tcp"})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ScanError(f"{where}: {message}.") from None
    except ValueError as exc:
        raise ScanError(f"{exc}.") from None
    return device


def describe_line(device: ModbusDevice) -> str:
    """`Modbus TCP at 10.0.0.5:502`, `Modbus RTU on /dev/ttyUSB0 (9600 baud, 8N1)`."""
    if isinstance(device, ModbusRtuDevice):
        parity = {"none": "N", "even": "E", "odd": "O"}[device.parity]
        framing = f"{device.bytesize}{parity}{device.stopbits}"
        return f"Modbus RTU on {device.serial_port} ({device.baudrate} baud, {framing})"
    kind = "Modbus RTU over TCP" if isinstance(device, ModbusRtuOverTcpDevice) else "Modbus TCP"
    return f"{kind} at {device.host}:{device.port}"


# -- scanning ----------------------------------------------------------------------------------


def _check_serial_port(device: ModbusRtuDevice) -> None:
    """Fail with a clear reason when the serial port is missing or may not be opened."""
    port = str(device.serial_port)
    if not os.path.exists(port):
        raise ScanError(f"Serial port {port} does not exist.")
    if not os.access(port, os.R_OK | os.W_OK):
        raise ScanError(
            f"No permission to open {port}: add this user to the group that owns it "
            "(often dialout)."
        )


async def _check_reachable(device: ModbusDevice) -> None:
    """Fail with the operating system's reason when the TCP connection cannot be opened.

    pymodbus only says that a connection failed; an engineer needs to know whether the host is
    unknown, refuses the port, or does not answer.
    """
    if isinstance(device, ModbusRtuDevice):
        return
    where = f"{device.host}:{device.port}"
    wait = max(device.timeout, 3.0)
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(device.host, device.port), wait
        )
    except socket.gaierror:
        raise ScanError(f"Cannot find host {device.host}: the name does not resolve.") from None
    except TimeoutError:
        raise ScanError(f"Cannot connect to {where}: no answer within {wait:g} s.") from None
    except ConnectionRefusedError:
        raise ScanError(
            f"Cannot connect to {where}: connection refused (nothing listens on that port)."
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ScanError(f"Cannot connect to {where}: {reason[:1].lower()}{reason[1:]}.") from None
    writer.close()
    with contextlib.suppress(OSError):  # the probe connection is gone either way
        await writer.wait_closed()


class _Scanner:
    """Sends the scan's read requests over one line and records what answers."""

    def __init__(
        self,
        options: ScanOptions,
        report: ScanReport,
        progress: ScanProgress,
        stop: asyncio.Event,
    ) -> None:
        self.options = options
        self.report = report
        self.progress = progress
        self.stop = stop
        self.line = ModbusLine(options.device)
        self.timeout = options.device.timeout

    async def run(self) -> None:
        """Find the units, then the readable ranges of each; `report` fills as it goes."""
        await self._open()
        try:
            present = await self._find_units()
            for unit in present:
                await self._scan_tables(unit)
        finally:
            self.line.close()

    async def _open(self) -> None:
        await _check_reachable(self.options.device)
        try:
            await self.line.connect()
        except NotConnected as exc:
            raise ScanError(f"Cannot open {self.line.describe()}: {exc}.") from None

    async def _find_units(self) -> list[UnitScan]:
        units = self.options.units
        self.progress.begin("Looking for units", len(units))
        for unit in units:
            answer = await self._read(unit, "holding", 0, 1)
            self.report.units_probed += 1
            self.progress.advance(1)
            if answer.silent or answer.exception in _GATEWAY_ABSENT:
                continue
            self.report.units.append(UnitScan(unit, answer))
        return list(self.report.units)

    async def _read(self, unit: int, table: ModbusTable, start: int, count: int) -> Answer:
        """One read request; a lost connection is reopened once, a stale answer asked again."""
        if self.stop.is_set():
            raise _Interrupted
        function = _READ_FUNCTION[table]

        async def send(client: Any) -> Any:
            return await getattr(client, function)(start, count=count, device_id=unit)

        loop = asyncio.get_running_loop()
        timeout = self.timeout + _transmission_time(self.options.device, table, count)
        for attempt in range(2):
            began = loop.time()
            self.report.requests += 1
            try:
                response: Any = await self.line.request(
                    send, device="scan", response_timeout=timeout
                )
            except (NotConnected, ConnectionException):
                await self._reconnect()
                continue
            except (TimeoutError, ModbusIOException):
                # pymodbus also raises this at once for a late answer to an earlier request
                # (wrong transaction or unit id): then the real answer may still be coming.
                if attempt == 0 and loop.time() - began < timeout / 2:
                    continue
                return _SILENT
            except ModbusException:
                return _SILENT
            if response.isError():
                return Answer(data=False, exception=getattr(response, "exception_code", 0))
            return _DATA
        return _SILENT

    async def _reconnect(self) -> None:
        self.line.close()
        try:
            await self.line.connect()
        except NotConnected as exc:
            raise ScanError(f"Lost {self.line.describe()} and cannot reopen it: {exc}.") from None

    async def _read_for(self, unit: UnitScan, table: ModbusTable, start: int, count: int) -> Answer:
        unit.requests += 1
        return await self._read(unit.unit, table, start, count)

    def _budget_left(self, unit: UnitScan) -> bool:
        if unit.requests < self.options.max_requests:
            return True
        unit.budget_reached = True
        return False

    async def _scan_tables(self, unit: UnitScan) -> None:
        """Probe the four tables breadth first: whole blocks, then halves, then edges."""
        span = self.options.max_address + 1
        self.progress.begin(f"Unit {unit.unit}: reading the tables", span * len(TABLES))
        queue: deque[tuple[ModbusTable, int, int]] = deque(
            (table, start, min(_BLOCK[table], span - start))
            for table in TABLES
            for start in range(0, span, _BLOCK[table])
        )
        refused: dict[ModbusTable, list[tuple[int, int]]] = {table: [] for table in TABLES}
        while queue:
            table, start, count = queue.popleft()
            scan = unit.tables[table]
            if scan.stopped is not None or not self._budget_left(unit):
                self.progress.advance(count)
                continue
            answer = await self._read_for(unit, table, start, count)
            if answer.data:
                scan.ranges.append((start, start + count))
                scan.failures = 0
            elif answer.exception in _RANGE_REFUSALS:
                scan.failures = 0
                if count > self._resolution(table):
                    half = count // 2
                    queue.append((table, start, half))
                    queue.append((table, start + half, count - half))
                    continue  # the halves settle these addresses
                refused[table].append((start, count))
            elif answer.exception == _ILLEGAL_FUNCTION:
                scan.stopped = f"not supported ({answer.describe()})"
            else:
                scan.failures += 1
                if scan.failures >= _FAILURES_BEFORE_GIVING_UP:
                    scan.stopped = (
                        f"given up after {scan.failures} failed requests in a row "
                        f"(last: {answer.describe()})"
                    )
            self.progress.advance(count)
        for table in TABLES:
            await self._find_edges(unit, unit.tables[table], refused[table])
            unit.tables[table].ranges = _merge(unit.tables[table].ranges)
        unit.complete = not unit.budget_reached

    def _resolution(self, table: ModbusTable) -> int:
        bits = table in ("coil", "discrete")
        return self.options.resolution * (_BITS_PER_REGISTER if bits else 1)

    async def _find_edges(
        self, unit: UnitScan, scan: TableScan, refused: list[tuple[int, int]]
    ) -> None:
        """Extend each readable range into the refused blocks beside it, to the exact address."""
        refused_from = dict(refused)
        refused_until = {start + count: count for start, count in refused}
        for start, stop in _merge(scan.ranges):
            if stop in refused_from:
                more = await self._longest_run(unit, scan.table, stop, refused_from[stop], True)
                if more:
                    scan.ranges.append((stop, stop + more))
            if start in refused_until:
                more = await self._longest_run(unit, scan.table, start, refused_until[start], False)
                if more:
                    scan.ranges.append((start - more, start))

    async def _longest_run(
        self, unit: UnitScan, table: ModbusTable, edge: int, limit: int, forward: bool
    ) -> int:
        """How many addresses after (or before) `edge` can be read, fewer than `limit`.

        Binary search: readable addresses next to a readable range are taken to be contiguous.
        """
        readable, refused = 0, limit
        while refused - readable > 1 and self._budget_left(unit):
            middle = (readable + refused) // 2
            first = edge if forward else edge - middle
            answer = await self._read_for(unit, table, first, middle)
            if answer.data:
                readable = middle
            else:
                refused = middle
        return readable


def _transmission_time(device: ModbusDevice, table: ModbusTable, count: int) -> float:
    """Seconds a serial line takes to carry the request and its answer.

    Added to the timeout, so that `--timeout` is the device's reaction time on any baud rate:
    a 125-register answer alone takes 0.3 s at 9600 baud.
    """
    if not isinstance(device, ModbusRtuDevice):
        return 0.0
    data = (count + 7) // 8 if table in ("coil", "discrete") else 2 * count
    # Request (8 bytes), answer (unit, function, byte count, data, CRC), two 3.5-byte silences.
    frames = 8 + 5 + data + 7
    bits_per_byte = 1 + device.bytesize + (device.parity != "none") + device.stopbits
    return frames * bits_per_byte / device.baudrate


def _merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with touching or overlapping ranges joined."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


async def scan(
    options: ScanOptions,
    report: ScanReport,
    *,
    progress: ScanProgress | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Scan the line, filling `report`; setting `stop` ends the scan at the next request.

    Raises `ScanError` when the line cannot be opened, or is lost and cannot be reopened.
    """
    scanner = _Scanner(options, report, progress or _NoProgress(), stop or asyncio.Event())
    try:
        await scanner.run()
    except _Interrupted:
        report.interrupted = True
    finally:
        report.finished = time.monotonic()
        for unit in report.units:  # an interrupted scan stops before merging
            for table in unit.tables.values():
                table.ranges = _merge(table.ranges)


# -- reporting ---------------------------------------------------------------------------------


def _format_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    shown = [
        f"{start}" if stop - start == 1 else f"{start}-{stop - 1}"
        for start, stop in ranges[:_RANGES_SHOWN]
    ]
    if len(ranges) > _RANGES_SHOWN:
        shown.append(f"and {len(ranges) - _RANGES_SHOWN} more ranges")
    return ", ".join(shown)


def print_report(report: ScanReport, console: Console) -> None:
    """The units found and their readable ranges, as a table, then what to make of it."""
    options = report.options
    answered = len(report.units)
    tried = format_units(options.units[: report.units_probed]) or "none"
    ids = "id" if report.units_probed == 1 else "ids"
    console.print(
        f"{describe_line(options.device)}: {answered} of {report.units_probed} unit {ids} "
        f"answered (tried {tried}); "
        f"{report.requests} requests in {report.elapsed:.1f} s.",
        highlight=False,
        soft_wrap=True,
    )
    readable = [unit for unit in report.units if unit.readable]
    if readable:
        table = Table()
        for column in ("unit", "table", "readable addresses", "count"):
            table.add_column(column, justify="right" if column == "count" else "left")
        for unit in readable:
            for position, name in enumerate(TABLES):
                scan = unit.tables[name]
                if scan.ranges:
                    text = _format_ranges(scan.ranges)
                    if scan.stopped:
                        text += f"; then {scan.stopped}"
                elif scan.stopped:
                    text = scan.stopped
                else:
                    text = f"nothing up to {options.max_address}"
                table.add_row(
                    str(unit.unit) if position == 0 else "",
                    name,
                    text,
                    str(scan.size) if scan.ranges else "",
                    end_section=position == len(TABLES) - 1,
                )
        console.print(table)
    for line in _notes(report, readable):
        console.print(line, highlight=False, soft_wrap=True)


def _units(units: Sequence[int]) -> str:
    """`Unit 3` or `Units 1-3, 7`."""
    return f"Unit {units[0]}" if len(units) == 1 else f"Units {format_units(units)}"


def _notes(report: ScanReport, readable: list[UnitScan]) -> list[str]:
    options = report.options
    notes: list[str] = []
    empty = [unit for unit in report.units if not unit.readable and unit.complete]
    if empty:
        answers = sorted({unit.first_answer.describe() for unit in empty})
        notes.append(
            f"{_units([unit.unit for unit in empty])} answered "
            f"({', '.join(answers)}) but let nothing be read; a gateway or a simulator may "
            "answer this way for units that are not there."
        )
    same = len(readable) > 1 and len({unit.layout() for unit in readable}) == 1
    if same and isinstance(options.device, ModbusTcpDevice):
        notes.append(
            f"{_units([unit.unit for unit in readable])} have the same readable ranges: "
            "identical devices behind a gateway, or one device that ignores the unit id "
            "(then one device entry is enough)."
        )
    unread = [unit.unit for unit in report.units if not unit.readable and not unit.complete]
    if unread:
        notes.append(
            f"{_units(unread)} answered, but the scan stopped before finding anything "
            "readable there."
        )
    short = [unit.unit for unit in report.units if unit.budget_reached]
    if short:
        notes.append(
            f"Stopped after {options.max_requests} requests (--max-requests) on "
            f"{_units(short).lower()}: the ranges shown may be incomplete."
        )
    if report.interrupted:
        notes.append("Interrupted: this is what was found before Ctrl-C.")
    if readable:
        notes.insert(
            0,
            "Addresses are 0-based protocol addresses, as written in the configuration "
            "(holding:0 is the manuals' 40001).",
        )
    if readable and options.resolution > 1:
        notes.append(
            f"Readable runs shorter than about {2 * options.resolution} registers inside "
            "unreadable space can be missed (see --resolution)."
        )
    return notes


# -- the starter configuration -----------------------------------------------------------------


def _yaml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML scalar, with any character escaped


def _device_lines(device: ModbusDevice, unit: UnitScan) -> list[str]:
    name = f"unit{unit.unit}"
    lines = [f"  - name: {name}"]
    if isinstance(device, ModbusRtuDevice):
        lines += [
            "    driver: modbus_rtu",
            f"    serial_port: {_yaml_string(str(device.serial_port))}",
            f"    baudrate: {device.baudrate}",
            f"    parity: {device.parity}",
            f"    stopbits: {device.stopbits}",
        ]
    else:
        driver = "modbus_rtu_tcp" if isinstance(device, ModbusRtuOverTcpDevice) else "modbus_tcp"
        lines += [
            f"    driver: {driver}",
            f"    host: {_yaml_string(device.host)}",
            f"    port: {device.port}",
        ]
    lines += [
        f"    unit_id: {unit.unit}",
        "    interval: 1s",
        # The agent's default, unless the scan needed longer: its reads are up to 125
        # registers, which take 0.3 s alone at 9600 baud.
        f"    timeout: {max(device.timeout, 1.0):g}s",
        "    points:",
    ]
    for table in TABLES:
        ranges = unit.tables[table].ranges
        for index, (start, stop) in enumerate(ranges):
            size = stop - start
            what = "bits" if table in ("coil", "discrete") else "registers"
            lines.append(f"      # {table} {start}-{stop - 1} is readable ({size} {what})")
            if index >= _RANGES_WITH_EXAMPLES:
                continue
            for address in range(start, min(stop, start + _EXAMPLES_PER_RANGE)):
                lines.append(f"      - id: {name}.{table}_{address}")
                lines.append(f"        address: {table}:{address}")
                if table in ("input", "holding"):
                    lines.append("        type: uint16")
        if len(ranges) > _RANGES_WITH_EXAMPLES:
            lines.append(
                f"      # (examples only for the first {_RANGES_WITH_EXAMPLES} {table} ranges)"
            )
    return lines


def starter_config(report: ScanReport) -> str:
    """A configuration that `shopfloor check` accepts: one device per unit with readable
    ranges, a few placeholder points per range, and comments saying what to change."""
    device = report.options.device
    lines = [
        f"# Starter configuration written by `shopfloor scan` for {describe_line(device)}",
        f"# on {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. Every key is documented in "
        "README.md (Configuration).",
        "#",
        "# The points below only show what the scan could read: each is a single register read",
        "# as uint16 (or a single coil or input). For each point you keep, give it a real id,",
        "# set its type (int32, float32 ... spanning 2 or 4 registers), order, scale and unit",
        "# from the device's manual (`shopfloor read CONFIG POINT --all-orders` helps find the",
        "# order), and delete the others. Ranges are 0-based protocol addresses.",
        "",
        "agent:",
        "  id: gw-new                  # TODO: this gateway's id (letters, digits, . _ -)",
        "",
        "mqtt:",
        "  host: 127.0.0.1             # TODO: the platform's broker",
        "  port: 1883",
        "  topic_prefix: shopfloor     # TODO: e.g. city/plant7",
        "",
        "devices:",
    ]
    if report.interrupted:
        lines.insert(1, "# The scan was interrupted: more may be readable than listed here.")
    for unit in report.units:
        if unit.readable:
            lines.extend(_device_lines(device, unit))
            lines.append("")
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------


class _RichProgress:
    """A progress bar per phase, on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: Any = None

    def begin(self, description: str, total: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, steps: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, steps)


async def _scan_until_done_or_ctrl_c(options: ScanOptions, report: ScanReport) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stderr = Console(stderr=True)

    def first_ctrl_c() -> None:
        # The request in flight ends within the timeout; a second Ctrl-C quits at once.
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)

    loop.add_signal_handler(signal.SIGINT, first_ctrl_c)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        # No bar when stderr is a file or pipe: it would only leave blank lines there.
        with Progress(
            *columns, console=stderr, transient=True, disable=not stderr.is_terminal
        ) as bar:
            await scan(options, report, progress=_RichProgress(bar), stop=stop)
    finally:
        if not stop.is_set():
            loop.remove_signal_handler(signal.SIGINT)


def _error(message: str) -> None:
    # Plain print: a message wrapped at the terminal's width is harder to grep in a log.
    print(message, file=sys.stderr)


def scan_command(
    *,
    target: str | None,
    serial_port: str | None,
    rtu_over_tcp: bool,
    baudrate: int,
    parity: str,
    stopbits: int,
    units: str | None,
    timeout: float,
    max_address: int,
    resolution: int,
    max_requests: int,
    write_config: Path | None,
) -> int:
    """`shopfloor scan`: scan, print the report, write the starter config; the exit status."""
    try:
        if (target is None) == (serial_port is None):
            raise ScanError("Give either HOST[:PORT] or --serial PORT.")
        if serial_port is not None and rtu_over_tcp:
            raise ScanError("--rtu-over-tcp is for a HOST, not for --serial.")
        if write_config is not None and write_config.exists():
            raise ScanError(f"{write_config} exists; give a new file name for --write-config.")
        device = _line_settings(
            target=target,
            serial_port=serial_port,
            rtu_over_tcp=rtu_over_tcp,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            timeout=timeout,
        )
        if isinstance(device, ModbusRtuDevice):
            _check_serial_port(device)
        serial_line = not isinstance(device, ModbusTcpDevice)
        try:
            unit_ids = (
                parse_units(
                    units, lowest=1 if serial_line else 0, highest=247 if serial_line else 255
                )
                if units is not None
                else (SERIAL_UNITS if serial_line else DEFAULT_TCP_UNITS)
            )
        except ValueError as exc:
            raise ScanError(f"--units: {exc}.") from None
        if not 0 <= max_address <= 65535:
            raise ScanError("--max-address must be between 0 and 65535.")
        if resolution < 1 or max_requests < 1:
            raise ScanError("--resolution and --max-requests must be at least 1.")
    except ScanError as exc:
        _error(str(exc))
        return 1
    options = ScanOptions(device, unit_ids, max_address, resolution, max_requests)
    report = ScanReport(options)
    try:
        asyncio.run(_scan_until_done_or_ctrl_c(options, report))
    except ScanError as exc:
        report.error = str(exc)
    except KeyboardInterrupt:
        report.interrupted = True
    out = Console()
    if report.units:
        print_report(report, out)
    if report.error is not None:
        _error(report.error)
        return 1
    if not report.units:
        if report.interrupted:
            _error("Interrupted before any unit answered.")
            return 130
        _error(
            f"No unit answered on {describe_line(device)} (tried units "
            f"{format_units(unit_ids)} with a {timeout:g} s timeout)."
        )
        return 1
    if write_config is not None:
        if any(unit.readable for unit in report.units):
            write_config.write_text(starter_config(report))
            print(f"Wrote {write_config}: check it with `shopfloor check {write_config}`.")
        else:
            _error(f"Nothing was readable, so {write_config} was not written.")
    return 130 if report.interrupted else 0
