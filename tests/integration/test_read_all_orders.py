"""`shopfloor read --all-orders` against a real Modbus server: every order side by side."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.settings import WordOrder
from drivers.modbus.codec import decode, encode
from drivers.simulate.modbus import SimulatedModbusServer
from tests.conftest import REPO, modbus_device, write_config

ORDERS: tuple[WordOrder, ...] = ("ABCD", "CDAB", "BADC", "DCBA")


def read_all_orders(config: Path, *points: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "read", str(config), *points, "--all-orders"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        env={**os.environ, "COLUMNS": "250"},  # no wrapped cells
        check=False,
    )


def rows(stdout: str) -> dict[str, dict[str, str]]:
    """{point id: {column: cell}} from the printed table."""
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("┃"))
    columns = [cell.strip() for cell in header.strip("┃").split("┃")]
    table: dict[str, dict[str, str]] = {}
    for line in lines:
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            table[cells[0]] = dict(zip(columns, cells, strict=True))
    return table


def config_for(modbus: SimulatedModbusServer, tmp_path: Path, points: list[dict[str, object]]):
    return write_config(
        tmp_path, broker_port=1883, devices=[modbus_device("plc", modbus.port, points)]
    )


def test_float32_cdab_shows_raw_registers_and_every_order(modbus, tmp_path: Path):
    registers = encode(1234.5, "float32", "CDAB")
    modbus.set_registers("holding", 12, registers)
    config = config_for(
        modbus,
        tmp_path,
        [{"id": "die_temp", "address": "holding:12", "type": "float32", "order": "CDAB"}],
    )
    result = read_all_orders(config, "die_temp")
    assert result.returncode == 0, result.stdout + result.stderr
    row = rows(result.stdout)["die_temp"]
    assert row["raw"] == "5000 449A"  # the low word first, as this device sends it
    assert row["CDAB"] == "1234.5 *"  # the value, marked as the configured order
    assert row["ABCD"] == f"{decode(registers, 'float32', 'ABCD'):.7g}"
    for order in ("ABCD", "BADC", "DCBA"):
        assert "*" not in row[order]
        assert row[order] != "1234.5"


def test_the_marked_column_follows_the_configured_order(modbus, tmp_path: Path):
    # The same registers configured wrongly as ABCD: the right value shows under CDAB, unmarked.
    modbus.set_registers("holding", 20, encode(-123456789, "int32", "CDAB"))
    modbus.set_registers("holding", 30, encode(0x0102030405060708, "uint64", "DCBA"))
    config = config_for(
        modbus,
        tmp_path,
        [
            {"id": "counter", "address": "holding:20", "type": "int32"},
            {"id": "energy", "address": "holding:30", "type": "uint64", "order": "DCBA"},
        ],
    )
    result = read_all_orders(config, "energy", "counter")
    assert result.returncode == 0, result.stdout + result.stderr
    table = rows(result.stdout)
    assert list(table) == ["energy", "counter"]  # in the order asked for
    assert table["counter"]["CDAB"] == "-123456789"
    assert table["counter"]["ABCD"].endswith(" *")
    assert table["energy"]["DCBA"] == f"{0x0102030405060708} *"
    assert table["energy"]["raw"] == "0807 0605 0403 0201"
    registers = encode(0x0102030405060708, "uint64", "DCBA")
    for order in ORDERS:
        assert table["energy"][order].removesuffix(" *") == str(decode(registers, "uint64", order))


def test_16_bit_points_show_both_byte_orders(modbus, tmp_path: Path):
    modbus.set_registers("holding", 3, [0x0014])
    modbus.set_registers("holding", 16, [420])
    config = config_for(
        modbus,
        tmp_path,
        [
            {"id": "strokes", "address": "holding:3", "type": "int16", "order": "BADC"},
            {"id": "current", "address": "holding:16", "type": "uint16", "scale": 0.1},
        ],
    )
    result = read_all_orders(config, "strokes", "current")
    assert result.returncode == 0, result.stdout + result.stderr
    table = rows(result.stdout)
    assert table["strokes"]["raw"] == "0014"
    assert table["strokes"]["ABCD"] == "20"
    assert table["strokes"]["BADC"] == "5120 *"
    assert table["strokes"]["CDAB"] == "= ABCD"
    assert table["strokes"]["DCBA"] == "= BADC"
    assert table["current"]["ABCD"] == "42.0 *"  # scaled, as the device's display shows it


def test_a_failed_point_shows_the_reason_and_exits_1(modbus, tmp_path: Path):
    config = config_for(
        modbus,
        tmp_path,
        [{"id": "gone", "address": "holding:1999", "type": "float32"}],  # runs past the end
    )
    result = read_all_orders(config, "gone")
    assert result.returncode == 1
    assert rows(result.stdout)["gone"]["raw"] == "bad (exception 2 (illegal data address))"
    assert "Traceback" not in result.stderr


def test_a_configured_order_that_gives_nan_still_shows_the_other_orders(modbus, tmp_path: Path):
    # A NaN sent low word first: the configured CDAB decoding is NaN (a bad sample), yet the
    # engineer still needs the raw words and the other orders to judge the configuration.
    modbus.set_registers("holding", 20, [0x0000, 0x7FC0])
    config = config_for(
        modbus,
        tmp_path,
        [{"id": "flow", "address": "holding:20", "type": "float32", "order": "CDAB"}],
    )
    result = read_all_orders(config, "flow")
    assert result.returncode == 1, result.stdout + result.stderr
    row = rows(result.stdout)["flow"]
    assert row["raw"] == "0000 7FC0 (bad: not a number: nan)"
    assert row["CDAB"] == "nan *"
    assert row["ABCD"] == f"{decode([0x0000, 0x7FC0], 'float32', 'ABCD'):.7g}"
