"""The simulated OPC UA packaging line, read with a bare asyncua client: every type, namespace
URIs that move, values that change, and a restart that keeps its values."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asyncua import Client, ua

from drivers.simulate.broker import free_port
from drivers.simulate.opcua import NAMESPACE_URI, PACKAGING_LINE, SimulatedOpcUaServer
from tests.conftest import REPO


@pytest.fixture
def line() -> Iterator[SimulatedOpcUaServer]:
    with SimulatedOpcUaServer(free_port()) as server:
        yield server


async def read(endpoint: str, paths: list[str]) -> list[ua.DataValue]:
    async with Client(endpoint, timeout=5) as client:
        index = await client.get_namespace_index(NAMESPACE_URI)
        nodes = [client.get_node(f"ns={index};s={path}") for path in paths]
        values: list[ua.DataValue] = await client.read_attributes(nodes)
        return values


def test_every_variable_reads_with_its_type_and_a_good_status(line):
    paths = [variable.path for variable in PACKAGING_LINE]
    values = asyncio.run(read(line.endpoint, paths))
    for variable, data in zip(PACKAGING_LINE, values, strict=True):
        assert data.StatusCode.is_good(), variable.path
        assert data.Value.VariantType == variable.variant_type, variable.path
        if variable.variant_type == ua.VariantType.Float:
            assert data.Value.Value == pytest.approx(variable.initial, rel=1e-7)
        else:
            assert data.Value.Value == variable.initial, variable.path
        assert data.SourceTimestamp is not None
    by_path = dict(zip(paths, values, strict=True))
    assert by_path["Types.UInt64"].Value.Value == 2**64 - 1
    assert by_path["Labeler.LastBatch"].Value.Value == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_a_moved_namespace_index_is_found_by_its_uri():
    with SimulatedOpcUaServer(free_port(), shift_namespace=3) as server:
        assert server.node_id("Filler.Speed") == "ns=5;s=Filler.Speed"
        [speed] = asyncio.run(read(server.endpoint, ["Filler.Speed"]))
        assert speed.Value.Value == 120.0


def test_values_change_when_asked_and_survive_a_restart():
    with SimulatedOpcUaServer(free_port(), changing=True, tick=0.05) as server:
        first = asyncio.run(read(server.endpoint, ["Filler.Count"]))[0].Value.Value
        time.sleep(1.2)
        later = asyncio.run(read(server.endpoint, ["Filler.Count"]))[0].Value.Value
        assert later > first
    with SimulatedOpcUaServer(free_port()) as server:
        server.set_value("Filler.Recipe", "WATER-1.5L")
        server.stop()
        server.start()
        [recipe] = asyncio.run(read(server.endpoint, ["Filler.Recipe"]))
        assert recipe.Value.Value == "WATER-1.5L"


def test_simulate_command_serves_the_packaging_line():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "simulate", "opcua", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"opc.tcp://127.0.0.1:{port}/shopfloor/packaging-line" in banner
        values: list[Any] = asyncio.run(
            read(f"opc.tcp://127.0.0.1:{port}/shopfloor/packaging-line", ["Filler.Running"])
        )
        assert values[0].Value.Value is True
    finally:
        process.terminate()
        assert process.wait(15) == 0
