"""`shopfloor scan` against real simulated Modbus devices, run as an engineer runs it.

The simulator serves addresses 0-1,999 of all four tables for each of its unit ids, answers
"illegal data address" beyond them, and does not answer at all for other unit ids.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.scan import (
    Answer,
    ScanOptions,
    ScanReport,
    _NoProgress,
    _Scanner,
    format_units,
    parse_target,
    parse_units,
)
from agent.settings import ModbusTable, ModbusTcpDevice
from drivers.simulate.broker import free_port
from drivers.simulate.modbus import PRESS_LINE_MAP, SimulatedModbusServer, press_line_model
from tests.conftest import REPO

# Wide enough that rich never wraps a table row or a message.
ENV = {**os.environ, "COLUMNS": "250"}


def shopfloor(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The command line as an engineer runs it."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env=ENV,
        check=False,
    )


def table_rows(stdout: str) -> dict[tuple[str, str], tuple[str, str]]:
    """{(unit, table): (readable addresses, count)} from the printed table."""
    rows: dict[tuple[str, str], tuple[str, str]] = {}
    unit = ""
    for line in stdout.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        unit = cells[0] or unit
        rows[(unit, cells[1])] = (cells[2], cells[3])
    return rows


@pytest.fixture
def press_line() -> Iterator[SimulatedModbusServer]:
    """The press-line PLC as unit 1 on Modbus TCP, its model running."""
    with SimulatedModbusServer(
        0, register_map=PRESS_LINE_MAP, model=press_line_model(), unit_ids=(1,)
    ) as server:
        yield server


def test_scan_finds_unit_1_and_the_press_lines_ranges(press_line: SimulatedModbusServer):
    result = shopfloor("scan", f"127.0.0.1:{press_line.port}", "--units", "1-3", "--timeout", "0.2")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"Modbus TCP at 127.0.0.1:{press_line.port}: 1 of 3 unit ids answered" in result.stdout
    rows = table_rows(result.stdout)
    assert {unit for unit, _table in rows} == {"1"}
    for table in ("coil", "discrete", "input", "holding"):
        assert rows[("1", table)] == ("0-1999", "2000"), table
    for name, table, address, *_ in PRESS_LINE_MAP:  # every simulated point is in a range found
        first, last = map(int, rows[("1", table)][0].split("-"))
        assert first <= address <= last, name
    requests = re.search(r"; (\d+) requests in", result.stdout)
    assert requests is not None
    assert 100 < int(requests.group(1)) < 2000


def test_scan_reads_and_never_writes():
    with SimulatedModbusServer(0, unit_ids=(1,)) as server:
        pattern = [(address * 7919) & 0xFFFF for address in range(2000)]
        server.set_registers("holding", 0, pattern)
        server.set_registers("coil", 0, [address % 3 == 0 for address in range(2000)])
        result = shopfloor("scan", f"127.0.0.1:{server.port}", "--units", "1")
        assert result.returncode == 0, result.stderr
        assert server.get_registers("holding", 0, 2000) == pattern
        assert server.get_registers("coil", 0, 2000) == [a % 3 == 0 for a in range(2000)]
        assert server.get_registers("input", 0, 2000) == [0] * 2000
        assert server.get_registers("discrete", 0, 2000) == [False] * 2000


def test_written_config_passes_check_and_reads(press_line: SimulatedModbusServer, tmp_path: Path):
    config = tmp_path / "new.yaml"
    result = shopfloor(
        "scan", f"127.0.0.1:{press_line.port}", "--units", "1", "--write-config", str(config)
    )
    assert result.returncode == 0, result.stderr
    assert f"Wrote {config}" in result.stdout
    text = config.read_text()
    assert "uint16" in text and "TODO" in text
    checked = shopfloor("check", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "OK (1 device, 12 points)" in checked.stdout
    read = shopfloor("read", str(config), "unit1.holding_0", "unit1.coil_0")
    assert read.returncode == 0, read.stdout + read.stderr
    again = shopfloor("scan", f"127.0.0.1:{press_line.port}", "--write-config", str(config))
    assert again.returncode == 1
    assert again.stderr == f"{config} exists; give a new file name for --write-config.\n"
    assert config.read_text() == text


def test_scan_of_a_closed_port_says_so_in_one_line():
    port = free_port()
    result = shopfloor("scan", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Cannot connect to 127.0.0.1:{port}: connection refused (nothing listens on that port).\n"
    )


def test_scan_where_no_unit_answers():
    with SimulatedModbusServer(0, unit_ids=(7,)) as server:
        result = shopfloor(
            "scan", f"127.0.0.1:{server.port}", "--units", "1-2,255", "--timeout", "0.1"
        )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"No unit answered on Modbus TCP at 127.0.0.1:{server.port} (tried units 1-2, 255 "
        "with a 0.1 s timeout).\n"
    )


def test_scan_rtu_over_tcp_finds_several_units():
    with SimulatedModbusServer(0, transport="rtu_tcp", unit_ids=(2, 4)) as server:
        result = shopfloor(
            "scan",
            f"127.0.0.1:{server.port}",
            "--rtu-over-tcp",
            "--units",
            "1-5",
            "--timeout",
            "0.2",
            "--max-address",
            "2100",
        )
    assert result.returncode == 0, result.stderr
    assert "Modbus RTU over TCP" in result.stdout
    rows = table_rows(result.stdout)
    assert {unit for unit, _table in rows} == {"2", "4"}
    assert rows[("4", "holding")] == ("0-1999", "2000")


def test_scan_serial_line(serial_pair: tuple[str, str]):
    server_end, client_end = serial_pair
    with SimulatedModbusServer(
        transport="rtu", serial_port=server_end, baudrate=19200, unit_ids=(3,)
    ):
        result = shopfloor(
            "scan",
            "--serial",
            client_end,
            "--baudrate",
            "19200",
            "--units",
            "1-3",
            "--timeout",
            "0.2",
            "--max-address",
            "2100",
        )
    assert result.returncode == 0, result.stderr
    assert f"Modbus RTU on {client_end} (19200 baud, 8N1)" in result.stdout
    assert table_rows(result.stdout)[("3", "input")] == ("0-1999", "2000")


def test_ctrl_c_stops_and_prints_what_was_found(press_line: SimulatedModbusServer):
    # Single-address resolution over the whole address space: far more than a few seconds.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "scan",
            f"127.0.0.1:{press_line.port}",
            "--units",
            "1",
            "--max-address",
            "65535",
            "--resolution",
            "1",
            "--max-requests",
            "1000000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=ENV,
    )
    time.sleep(3)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "1 of 1 unit id answered" in stdout
    assert "Interrupted: this is what was found before Ctrl-C." in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Give either HOST[:PORT] or --serial PORT."),
        (["bad host"], "host: 'bad host' is neither an IP address nor a valid host name."),
        (["127.0.0.1:70000"], "'70000' is not a TCP port (1-65535)."),
        (["127.0.0.1", "--units", "1-300"], "--units: unit ids on this line go from 0 to 255"),
        (["--serial", "/dev/nonexistent-tty"], "Serial port /dev/nonexistent-tty does not exist."),
    ],
)
def test_bad_arguments_get_one_clear_line(args: list[str], message: str):
    result = shopfloor("scan", *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


# -- the probing strategy, against a device made of a few address sets -------------------------


class FakeDevice(_Scanner):
    """The scanner talking to a pretend unit 1 instead of a line."""

    def __init__(self, options: ScanOptions, readable: dict[str, set[int]]) -> None:
        super().__init__(options, ScanReport(options), _NoProgress(), asyncio.Event())
        self.readable = readable
        self.requests: dict[str, int] = {}

    async def _open(self) -> None:
        pass

    async def _read(self, unit: int, table: ModbusTable, start: int, count: int) -> Answer:
        self.requests[table] = self.requests.get(table, 0) + 1
        if unit != 1:
            return Answer(data=False)
        if table == "coil":
            return Answer(data=False, exception=1)
        if table == "discrete":
            return Answer(data=False)  # silent
        if all(address in self.readable[table] for address in range(start, start + count)):
            return Answer(data=True)
        return Answer(data=False, exception=2)


def options(**settings: int) -> ScanOptions:
    device = ModbusTcpDevice.model_validate(
        {
            "name": "fake",
            "driver": "modbus_tcp",
            "host": "127.0.0.1",
            "points": [{"id": "p", "address": "holding:0", "type": "uint16"}],
        }
    )
    return ScanOptions(device, (1, 2), **settings)


def test_edges_are_found_to_the_exact_address():
    holding = set(range(0, 76)) | set(range(200, 300)) | set(range(1000, 1500)) | {9999}
    device = FakeDevice(options(), {"holding": holding, "input": set()})
    asyncio.run(device.run())
    (unit,) = device.report.units
    assert unit.unit == 1 and unit.complete
    # 9999 alone is shorter than the resolution: not found, as documented.
    assert unit.tables["holding"].ranges == [(0, 76), (200, 300), (1000, 1500)]
    assert unit.tables["input"].ranges == []
    assert unit.tables["coil"].stopped == "not supported (exception 1 (illegal function))"
    assert device.requests["coil"] == 1
    assert "given up after 3 failed requests" in (unit.tables["discrete"].stopped or "")
    assert device.requests["discrete"] == 3
    # Each empty block of 125 costs 7 requests at resolution 32.
    assert device.requests["input"] == 80 * 7
    assert unit.requests < 1300


def test_resolution_1_finds_single_registers():
    holding = {5, 6, 7, 130, 9999}
    device = FakeDevice(
        options(max_address=9999, resolution=1, max_requests=100_000),
        {"holding": holding, "input": set()},
    )
    asyncio.run(device.run())
    assert device.report.units[0].tables["holding"].ranges == [(5, 8), (130, 131), (9999, 10000)]


def test_request_budget_stops_the_unit():
    device = FakeDevice(options(max_requests=50), {"holding": set(range(2000)), "input": set()})
    asyncio.run(device.run())
    unit = device.report.units[0]
    assert unit.budget_reached and not unit.complete
    assert unit.requests == 50


def test_unit_lists_and_targets():
    assert parse_units("1-3,7, 255") == (1, 2, 3, 7, 255)
    assert format_units((1, 2, 3, 7, 9, 10, 255)) == "1-3, 7, 9-10, 255"
    with pytest.raises(ValueError, match="runs backwards"):
        parse_units("5-1")
    with pytest.raises(ValueError, match="from 1 to 247"):
        parse_units("0-3", lowest=1, highest=247)
    assert parse_target("plc7") == ("plc7", 502)
    assert parse_target("10.0.0.5:1502") == ("10.0.0.5", 1502)
    assert parse_target("[fe80::1]:503") == ("fe80::1", 503)
    assert parse_target("fe80::1") == ("fe80::1", 502)
