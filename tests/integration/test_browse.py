"""`shopfloor browse` against the simulated OPC UA packaging line: the tree with types, access
and values, depth and start node, the export that `check` accepts and `read` reads, and one clear
line for each mistake.

Other variables may be added to the simulator: nothing here counts all of them.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from ruamel.yaml import YAML

from agent.browse import BrowsedNode, format_node_id, parse_node_id, point_ids, short_value
from agent.cli import main
from agent.config import load_config
from drivers.simulate import opcua as simulated_opcua
from drivers.simulate.broker import free_port
from drivers.simulate.opcua import NAMESPACE_URI, SimulatedOpcUaServer
from tests.conftest import REPO, write_config

NSU = f"nsu={NAMESPACE_URI}"
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # agent/settings.py, _check_name


@pytest.fixture(scope="module")
def line() -> Iterator[SimulatedOpcUaServer]:
    """One packaging line for the tests that only read (namespace moved by one, so that
    `ns=` indexes and `nsu=` URIs differ from the usual 2)."""
    with SimulatedOpcUaServer(free_port(), shift_namespace=1) as server:
        yield server


def browse(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`shopfloor browse ARGS` in this process: exit status, stdout, stderr."""
    status = main(["browse", *args])
    out, err = capsys.readouterr()
    return status, out, err


def row(out: str, name: str) -> str:
    """The tree line of the node with this browse name (the first one)."""
    for line in out.splitlines():
        if re.search(rf"(^|── ){re.escape(name)}  ", line):
            return line
    raise AssertionError(f"no node {name} in:\n{out}")


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


# -- the tree ------------------------------------------------------------------------------------


def test_the_tree_shows_the_line_with_types_access_values_and_uri_node_ids(line, capsys):
    status, out, err = browse(capsys, line.endpoint)
    assert status == 0, err
    assert err == ""
    assert out.splitlines()[0] == "Objects  Object  i=85"
    speed = row(out, "Speed")
    assert re.match(r"^[│ ]   [│ ]   [├└]── Speed  ", speed)  # depth 3
    assert "  Variable  Double  read-write  = 120.0  " in speed
    assert speed.endswith(f"{NSU};s=Filler.Speed")
    assert row(out, "Filler").endswith(f"{NSU};s=PackagingLine.Filler")
    assert "  Object  " in row(out, "PackagingLine")
    assert "Float  read-write  = 75.5" in row(out, "Level")
    assert "Boolean  read-write  = true" in row(out, "Running")
    assert 'String  read-write  = "COLA-0.5L"' in row(out, "Recipe")
    assert "Double[]  read-write  = [1.0, 1.0, 0.98, 1.01]" in row(out, "Nozzles")
    assert "DateTime  read-write  = 2026-01-01T00:00:00Z" in row(out, "LastBatch")
    assert "ByteString  read-write  = 0x0102FEFF" in row(out, "Signature")
    assert "UInt64  read-write  = 18446744073709551615" in row(out, "UInt64")
    # The server's diagnostics are left out, and the summary says how to see them.
    assert "Server  Object" not in out
    assert "--node i=2253 browses it" in out
    assert re.search(r"^\d+ nodes shown, \d+ variables, down to depth 3\.$", out, re.M)


def test_depth_limits_the_tree_and_marks_what_is_below(line, capsys):
    status, out, _ = browse(capsys, line.endpoint, "--depth", "2")
    assert status == 0
    assert re.search(r"  \(\+\d+ below\)$", row(out, "Filler"))
    assert "Speed  " not in out
    assert "raise --depth to see them" in out

    status, out, _ = browse(capsys, line.endpoint, "--depth", "0")
    assert status == 0
    assert re.match(r"^Objects  Object  i=85  \(\+\d+ below\)\n1 node shown, 0 variables", out)


@pytest.mark.parametrize(
    "form",
    ["nsu={uri};s=PackagingLine.Filler", "ns={index};s=PackagingLine.Filler"],
)
def test_node_starts_the_tree_anywhere_in_any_form(line, capsys, form: str):
    node = form.format(uri=NAMESPACE_URI, index=line.namespace_index)
    status, out, err = browse(capsys, line.endpoint, "--node", node, "--depth", "1")
    assert status == 0, err
    assert out.splitlines()[0] == f"Filler  Object  {NSU};s=PackagingLine.Filler"
    assert "Double  read-write  = 120.0" in row(out, "Speed")
    assert "Labeler" not in out and "Types" not in out


def test_node_may_be_a_variable_or_inside_the_server_object(line, capsys):
    status, out, _ = browse(capsys, line.endpoint, "--node", f"{NSU};s=Filler.Nozzles")
    assert status == 0
    assert out.splitlines()[0].startswith("Nozzles  Variable  Double[]  read-write  = [1.0")

    # --node inside the Server object shows it: nothing is left out there.
    status, out, _ = browse(capsys, line.endpoint, "--node", "i=2253", "--depth", "1")
    assert status == 0
    assert out.splitlines()[0] == "Server  Object  i=2253"
    assert "ServerStatus  Variable  ServerStatusDataType  read" in row(out, "ServerStatus")
    assert "--node i=2253 browses it" not in out

    status, out, _ = browse(capsys, line.endpoint, "--node", "i=2259", "--depth", "0")
    assert status == 0  # Server.ServerStatus.State, an enumeration: its label is shown
    assert out.startswith("State  Variable  ServerState  read  = 0 (Running)  i=2259")


# -- the export ----------------------------------------------------------------------------------


def test_export_writes_points_that_check_accepts_and_read_reads(line, capsys, tmp_path: Path):
    export = tmp_path / "line.yaml"
    status, out, err = browse(capsys, line.endpoint, "--export", str(export))
    assert status == 0, err
    assert re.search(rf"^Wrote \d+ points to {re.escape(str(export))}", out, re.M)
    text = export.read_text(encoding="utf-8")
    assert text.startswith("# OPC UA points found by `shopfloor browse` on ")
    assert "Paste the device below into the `devices:` list" in text
    assert "  - id: packagingline.filler.speed  # Double, read-write\n" in text
    assert "  - id: packagingline.filler.nozzles  # Double[], read-write\n" in text

    snippet = load_yaml(export)
    assert list(snippet) == ["devices"]
    [device] = snippet["devices"]
    assert device["driver"] == "opcua"
    assert device["endpoint"] == line.endpoint
    assert device["mode"] == "subscription" and device["interval"] == "1s"
    assert NAME_RULE.match(device["name"])
    points = {point["id"]: point for point in device["points"]}
    assert len(points) == len(device["points"])  # unique ids
    assert all(NAME_RULE.match(point_id) for point_id in points)
    speed = points["packagingline.filler.speed"]
    assert speed["node"] == f"{NSU};s=Filler.Speed"
    assert speed.get("unit") in (None, "bottles/min")  # a unit if the server gives one
    assert points["packagingline.types.uint64"]["node"] == f"{NSU};s=Types.UInt64"
    assert all(point["node"].startswith(NSU) for point in device["points"])
    # The plant only: nothing from the Server object or standard folders.
    assert all(point_id.startswith("packagingline.") for point_id in points)

    # Placed into a full configuration it passes `check`, and `read` reads its points.
    config = write_config(tmp_path, broker_port=free_port(), devices=snippet["devices"])
    loaded = load_config(config)
    assert sum(len(d.points) for d in loaded.devices) == len(points)
    assert main(["check", str(config)]) == 0
    capsys.readouterr()
    status = main(
        ["read", str(config), "packagingline.filler.speed", "packagingline.filler.recipe"]
    )
    out, err = capsys.readouterr()
    assert status == 0, out + err
    assert "120.0" in out and "COLA-0.5L" in out


def test_export_carries_engineering_units_and_enumeration_types(capsys, tmp_path: Path):
    """A server whose variables have EngineeringUnits properties and an enumeration type,
    added to a fresh simulator through the OPC UA AddNodes service."""
    with SimulatedOpcUaServer(free_port()) as server:
        asyncio.run(add_units_and_state(server.endpoint))
        export = tmp_path / "filler.yaml"
        node = f"{NSU};s=PackagingLine.Filler"
        status, out, err = browse(capsys, server.endpoint, "--node", node, "--export", str(export))
    assert status == 0, err
    assert "= 120.0 bottles/min  " in row(out, "Speed")
    assert "EngineeringUnits  Property  EUInformation  read  = bottles/min" in out
    assert "ServerState  read  = 0 (Running)" in row(out, "BrowseTestState")
    text = export.read_text(encoding="utf-8")
    assert "  - id: filler.browseteststate  # ServerState (0 Running, 1 Failed, " in text
    points = {point["id"]: point for point in load_yaml(export)["devices"][0]["points"]}
    assert points["filler.speed"]["unit"] == "bottles/min"
    assert "unit" not in points["filler.level"]
    assert points["filler.browseteststate"]["node"] == f"{NSU};s=Filler.BrowseTestState"
    # Properties describe variables; they are not points.
    assert not any("engineeringunits" in point_id for point_id in points)


async def add_units_and_state(endpoint: str) -> None:
    client = Client(endpoint, timeout=5)
    client.set_user("admin")  # the simulator lets "admin" add nodes
    async with client:
        index = await client.get_namespace_index(NAMESPACE_URI)
        speed = client.get_node(f"ns={index};s=Filler.Speed")
        units = ua.EUInformation(DisplayName=ua.LocalizedText("bottles/min"))
        await speed.add_property(
            ua.NodeId("Filler.Speed.EngineeringUnits", index),
            ua.QualifiedName("EngineeringUnits", 0),
            ua.Variant(units, ua.VariantType.ExtensionObject),
        )
        filler = client.get_node(f"ns={index};s=PackagingLine.Filler")
        await filler.add_variable(
            ua.NodeId("Filler.BrowseTestState", index),
            ua.QualifiedName("BrowseTestState", index),
            ua.Variant(0, ua.VariantType.Int32),
            datatype=ua.NodeId(ua.ObjectIds.ServerState),
        )


def test_enumerations_show_their_type_name_and_value_label(line, capsys):
    """The simulator's enumerations, one described by EnumStrings, one only by its
    DataTypeDefinition (newer servers)."""
    enumerations = simulated_opcua.ENUMERATIONS
    variables = {v.path: v for v in simulated_opcua.PACKAGING_LINE if v.enumeration}
    assert len(variables) == 2
    status, out, err = browse(capsys, line.endpoint, "--depth", "3")
    assert status == 0, err
    for path, variable in variables.items():
        label = enumerations[variable.enumeration][variable.initial]
        shown = row(out, path.split(".")[1])
        assert f"  {variable.enumeration}  read-write  = {variable.initial} ({label})  " in shown


def test_export_never_overwrites_a_file(line, capsys, tmp_path: Path):
    export = tmp_path / "mine.yaml"
    export.write_text("keep me\n")
    status, out, err = browse(capsys, line.endpoint, "--export", str(export))
    assert status == 2
    assert out == ""
    assert err == f"{export} exists; give a new file name for --export.\n"
    assert export.read_text() == "keep me\n"


# -- mistakes ------------------------------------------------------------------------------------


def shopfloor(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line as an engineer runs it."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "COLUMNS": "250"},
        check=False,
    )


def test_an_unreachable_endpoint_is_one_line_and_exit_1():
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    result = shopfloor("browse", endpoint, "--timeout", "1")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Cannot open a session with {endpoint}: the connection was refused (is the server "
        "running, and is the port right?).\n"
    )


def test_an_unknown_node_is_one_line_and_exit_1(line, capsys):
    node = f"ns={line.namespace_index};s=PackagingLine.Nothing"
    status, out, err = browse(capsys, line.endpoint, "--node", node)
    assert status == 1
    assert out == ""
    assert err == f"The server at {line.endpoint} has no node {node}.\n"

    status, _, err = browse(capsys, line.endpoint, "--node", "nsu=urn:nobody;s=X")
    assert status == 1
    assert err.startswith(f"The server at {line.endpoint} has no namespace urn:nobody (its ")
    assert NAMESPACE_URI in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--node", "ns=2;x=Speed"], "'ns=2;x=Speed' is not an OPC UA node id: write it as"),
        (["--node", "Filler.Speed"], "'Filler.Speed' is not an OPC UA node id"),
        (["--depth", "-1"], "--depth must be 0 or more."),
        (["--timeout", "0"], "--timeout must be more than 0 seconds."),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2(args: list[str], message: str):
    result = shopfloor("browse", "opc.tcp://127.0.0.1:4840", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_bad_endpoint_or_missing_argument_is_a_usage_error():
    result = shopfloor("browse", "http://10.0.0.5:4840")
    assert result.returncode == 2
    assert result.stderr == (
        "'http://10.0.0.5:4840' is not an OPC UA endpoint: write it as opc.tcp://HOST:PORT[/PATH].\n"
    )
    result = shopfloor("browse")
    assert result.returncode == 2  # argparse
    assert "ENDPOINT" in result.stderr


# -- ids and node ids ----------------------------------------------------------------------------


def variable(*path: str) -> BrowsedNode:
    return BrowsedNode(ua.NodeId(path[-1], 2), path[-1], ua.NodeClass.Variable, path)


def test_point_ids_follow_the_configs_name_rule_and_are_unique():
    ids = point_ids(
        [
            variable("Line 1", "Oven", "Temp (°C)"),
            variable("Line 1", "Oven", "Temp [°C]"),
            variable("Line 1", "Oven", "temp_c"),
            variable("_Hidden", "-x-"),
            variable("Ünïcode", "%%%"),
            variable("A" * 150, "B" * 150),
        ]
    )
    assert ids[:3] == ["line_1.oven.temp_c", "line_1.oven.temp_c_2", "line_1.oven.temp_c_3"]
    assert ids[3] == "hidden.x"
    assert ids[4] == "n_code.node"
    assert all(NAME_RULE.match(point_id) and len(point_id) <= 200 for point_id in ids)
    assert len(set(ids)) == len(ids)


def test_node_ids_are_written_with_their_namespace_uri():
    namespaces = ["http://opcfoundation.org/UA/", "urn:a", "urn:plc"]
    assert format_node_id(ua.NodeId(85, 0), namespaces) == "i=85"
    assert format_node_id(ua.NodeId("Line1.Temp", 2), namespaces) == "nsu=urn:plc;s=Line1.Temp"
    assert format_node_id(ua.NodeId(1001, 1), namespaces) == "nsu=urn:a;i=1001"
    assert format_node_id(ua.NodeId(7, 9), namespaces) == "ns=9;i=7"  # index unknown
    assert parse_node_id(" nsu=urn:plc;s=A;B ") == ("urn:plc", ua.NodeId("A;B", 0))
    assert parse_node_id("ns=3;i=5") == (None, ua.NodeId(5, 3))


def test_values_are_shortened_to_one_line():
    node = variable("Line", "Text")
    node.value = "x" * 100
    assert len(short_value(node)) == 40 and short_value(node).endswith("…")
    node.value = list(range(100))
    assert short_value(node).startswith("[100 items: 0, 1, 2")
    node.value, node.value_error = None, "BadNotReadable"
    assert short_value(node) == "(BadNotReadable)"
    node.value, node.value_error, node.enum_labels = 2, None, {2: "Stopped"}
    assert short_value(node) == "2 (Stopped)"
