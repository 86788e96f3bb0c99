"""The OPC UA driver against the simulated packaging line (a real asyncua server on a free port):
every type with its value, status and source time; enumerations; browse paths; subscription
sampling, server deadband, queue and heartbeat; deleted and restored nodes; a server restarted
with its namespace indexes moved; writes converted to the node's data type."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua.ua.status_codes import StatusCodes

from agent.model import Quality, Sample
from agent.settings import OpcUaDevice
from drivers.base import NotConnected
from drivers.opcua.client import OpcUaDriver, WriteRefused
from drivers.opcua.security import Pki
from drivers.simulate.broker import free_port
from drivers.simulate.opcua import (
    NAMESPACE_URI,
    OTHER_NODE_ID_FORMS,
    PACKAGING_LINE,
    SimulatedOpcUaServer,
)
from tests.conftest import REPO

LINE = "/Objects/PackagingLine"


@pytest.fixture
def server() -> Iterator[SimulatedOpcUaServer]:
    with SimulatedOpcUaServer(free_port()) as started:
        yield started


def device(server: SimulatedOpcUaServer, points: list[dict[str, Any]], **settings: Any):
    return OpcUaDevice.model_validate(
        {
            "name": "line",
            "driver": "opcua",
            "endpoint": server.endpoint,
            "timeout": "2s",
            "points": points,
            **settings,
        }
    )


def run(
    settings: OpcUaDevice, body: Callable[[OpcUaDriver], Awaitable[Any]], tmp_path: Path
) -> Any:
    async def main() -> Any:
        driver = OpcUaDriver(settings, Pki(tmp_path / "pki"))
        await driver.connect()
        try:
            return await body(driver)
        finally:
            await driver.close()

    return asyncio.run(main())


async def collect(driver: OpcUaDriver, seconds: float, pause: float = 0.1) -> list[Sample]:
    """Read as the device task does, every `pause`, for `seconds`."""
    samples: list[Sample] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples += await driver.read(driver.device.points)
        await asyncio.sleep(pause)
    return samples


async def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the simulator (which waits for its own thread) without blocking this loop."""
    return await asyncio.to_thread(function, *args, **kwargs)


EXPECTED = {
    "Filler.Speed": 120.0,
    "Filler.Level": 75.5,
    "Filler.Running": True,
    "Filler.Count": 0,
    "Filler.Recipe": "COLA-0.5L",
    "Filler.Nozzles": [1.0, 1.0, 0.98, 1.01],
    "Labeler.Temperature": 42.0,
    "Labeler.Rejects": 0,
    "Labeler.LastBatch": "2026-01-01T00:00:00Z",
    "Labeler.Signature": "AQL+/w==",
    "Types.SByte": -100,
    "Types.Byte": 200,
    "Types.Int16": -30000,
    "Types.UInt16": 60000,
    "Types.Int32": -2_000_000_000,
    "Types.UInt32": 4_000_000_000,
    "Types.Int64": -(2**63),
    "Types.UInt64": 2**64 - 1,
    "Filler.State": "Running",  # an enumeration described by EnumStrings
    "Labeler.Mode": "Automatic",  # an enumeration described by its DataTypeDefinition
}


@pytest.mark.parametrize("mode", ["polling", "subscription"])
def test_every_type_arrives_with_its_value_quality_and_source_time(
    server: SimulatedOpcUaServer, tmp_path: Path, mode: str
):
    assert set(EXPECTED) == {v.path for v in PACKAGING_LINE}
    points = [{"id": path.lower(), "node": f"{LINE}/{path.replace('.', '/')}"} for path in EXPECTED]
    before = time.time() * 1000
    samples = run(device(server, points, mode=mode), lambda d: collect(d, 0.6), tmp_path)
    latest = {s.point: s for s in samples}
    for path, value in EXPECTED.items():
        sample = latest[path.lower()]
        assert (sample.value, sample.quality) == (value, Quality.GOOD), path
        float_value = isinstance(value, float) and not isinstance(value, bool)
        assert type(sample.value) is type(value) or float_value, path
        # The server's source time: written when the simulator started, before this test read.
        assert sample.ts <= time.time() * 1000 and sample.ts > before - 60_000, path


def test_every_node_id_form_reads(server: SimulatedOpcUaServer, tmp_path: Path):
    index = server.namespace_index
    points = [
        {"id": name.lower(), "node": f"ns={index};{identifier}"}
        for name, (identifier, _) in OTHER_NODE_ID_FORMS.items()
    ]
    points.append(
        {"id": "by_uri", "node": f"nsu={NAMESPACE_URI};g=09087e75-8e5e-499b-954f-f2a9603db28a"}
    )
    points.append({"id": "by_path", "node": f"{LINE}/Ids/2:Opaque"})  # with a namespace index
    points.append({"id": "server_state", "node": "i=2259"})  # namespace 0, an enumeration
    samples = run(device(server, points), lambda d: d.read(d.device.points), tmp_path)
    values = {s.point: s.value for s in samples}
    assert values == {
        "numeric": 1.5,
        "guid": 2.5,
        "opaque": 3.5,
        "by_uri": 2.5,
        "by_path": 3.5,
        "server_state": "Running",
    }


def test_enumerations_can_be_published_as_numbers(server: SimulatedOpcUaServer, tmp_path: Path):
    points = [{"id": "state", "node": f"{LINE}/Filler/State", "enum_as": "number"}]
    samples = run(device(server, points), lambda d: d.read(d.device.points), tmp_path)
    assert samples[0].value == 2


def test_status_and_source_time_are_honest(server: SimulatedOpcUaServer, tmp_path: Path):
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    server.set_value("Filler.Speed", 99.0, source_time=an_hour_ago)
    server.set_value("Filler.Level", 10.0, status=StatusCodes.UncertainLastUsableValue)
    server.set_value("Labeler.Temperature", 0.0, status=StatusCodes.BadSensorFailure)
    points = [
        {"id": "speed", "node": f"nsu={NAMESPACE_URI};s=Filler.Speed"},
        {"id": "level", "node": f"nsu={NAMESPACE_URI};s=Filler.Level"},
        {"id": "temp", "node": f"nsu={NAMESPACE_URI};s=Labeler.Temperature"},
    ]

    def read(max_clock_skew: str) -> dict[str, Sample]:
        settings = device(server, points, max_clock_skew=max_clock_skew)
        return {s.point: s for s in run(settings, lambda d: d.read(points_of(d)), tmp_path)}

    def points_of(driver: OpcUaDriver) -> Any:
        return driver.device.points

    trusted = read("2h")
    assert trusted["speed"].ts == int(an_hour_ago.timestamp() * 1000)  # the source's own time
    assert (trusted["level"].quality, trusted["level"].reason) == (
        Quality.UNCERTAIN,
        "UncertainLastUsableValue",
    )
    assert trusted["level"].value == 10.0
    assert (trusted["temp"].quality, trusted["temp"].value, trusted["temp"].reason) == (
        Quality.BAD,
        None,
        "BadSensorFailure",
    )
    # An hour off is beyond a 5-minute limit: the agent's receive time is used instead.
    skewed = read("5m")
    assert abs(skewed["speed"].ts - time.time() * 1000) < 10_000


def test_browse_paths_and_namespace_uris_survive_moved_namespace_indexes(tmp_path: Path):
    server = SimulatedOpcUaServer(free_port(), shift_namespace=0)
    server.start()
    try:
        points = [
            {"id": "speed", "node": f"{LINE}/Filler/Speed"},
            {"id": "recipe", "node": f"nsu={NAMESPACE_URI};s=Filler.Recipe"},
            {"id": "pinned", "node": f"ns={server.namespace_index};s=Filler.Running"},
            {"id": "missing", "node": f"{LINE}/Filler/Torque"},
        ]
        settings = device(server, points, reconnect_max="200ms")

        async def body(driver: OpcUaDriver) -> tuple[list[Sample], list[Sample]]:
            first = await driver.read(settings.points)
            await in_thread(server.stop)
            with pytest.raises(NotConnected):
                await driver.read(settings.points)
            server.shift_namespace = 3  # an update registered three namespaces before ours
            await in_thread(server.start)
            await driver.connect()
            return first, await driver.read(settings.points)

        first, after = run(settings, body, tmp_path)
    finally:
        server.stop()
    before = {s.point: s for s in first}
    moved = {s.point: s for s in after}
    assert before["speed"].value == moved["speed"].value == 120.0
    assert before["recipe"].value == moved["recipe"].value == "COLA-0.5L"
    assert before["pinned"].value is True
    # A fixed index now points into another namespace: BAD, on its own.
    assert moved["pinned"].quality is Quality.BAD and moved["pinned"].reason == "BadNodeIdUnknown"
    assert moved["missing"].quality is Quality.BAD
    assert "has no child named 'Torque'" in str(moved["missing"].reason)
    assert "Speed" in str(moved["missing"].reason)  # it lists what is there


@pytest.mark.parametrize("mode", ["polling", "subscription"])
def test_a_deleted_node_is_bad_alone_and_found_again(
    server: SimulatedOpcUaServer, tmp_path: Path, mode: str
):
    points = [
        {"id": "speed", "node": f"{LINE}/Filler/Speed"},
        {"id": "count", "node": f"{LINE}/Filler/Count"},
    ]
    settings = device(
        server, points, mode=mode, interval="100ms", resolve_retry="300ms", keepalive="1s"
    )

    async def body(driver: OpcUaDriver) -> tuple[list[Sample], list[Sample], int]:
        await collect(driver, 0.3)
        await in_thread(server.delete_variable, "Filler.Count")
        gone = await collect(driver, 1.0)
        await in_thread(server.restore_variable, "Filler.Count")
        await in_thread(server.set_value, "Filler.Count", 7)
        back = await collect(driver, 1.5)
        return gone, back, await in_thread(server.subscription_count)

    gone, back, subscriptions = run(settings, body, tmp_path)
    assert any(s.point == "count" and s.quality is Quality.BAD for s in gone)
    assert all(s.quality is Quality.GOOD for s in gone if s.point == "speed")
    if mode == "polling":
        assert [s for s in gone if s.point == "speed"], "the other point kept flowing"
    counts = [s for s in back if s.point == "count"]
    assert counts[-1].quality is Quality.GOOD and counts[-1].value == 7
    assert subscriptions == (1 if mode == "subscription" else 0)


def test_subscription_applies_the_server_deadband(server: SimulatedOpcUaServer, tmp_path: Path):
    points = [{"id": "speed", "node": f"{LINE}/Filler/Speed", "server_deadband": 1.0}]
    settings = device(server, points, mode="subscription", interval="100ms")

    async def body(driver: OpcUaDriver) -> list[Sample]:
        samples = await collect(driver, 0.4)
        for value in (120.5, 122.0, 122.4, 119.0):
            await in_thread(server.set_value, "Filler.Speed", value)
            await asyncio.sleep(0.3)
        return samples + await collect(driver, 0.4)

    values = [s.value for s in run(settings, body, tmp_path)]
    # 120.5 and 122.4 are within 1.0 of the value before: the server holds them back.
    assert values == [120.0, 122.0, 119.0]


def test_subscription_queue_delivers_every_sampled_value(
    server: SimulatedOpcUaServer, tmp_path: Path
):
    points = [
        {
            "id": "count",
            "node": f"{LINE}/Filler/Count",
            "sampling_interval": "0ms",  # every change, as the server sees it
            "queue_size": 20,
        }
    ]
    settings = device(server, points, mode="subscription", interval="1s")

    async def body(driver: OpcUaDriver) -> list[Sample]:
        await collect(driver, 0.2)
        for value in range(1, 9):
            await in_thread(server.set_value, "Filler.Count", value)
        return await collect(driver, 2.5, pause=0.5)

    values = [s.value for s in run(settings, body, tmp_path)]
    assert values == list(range(1, 9)), "all eight changes within one publishing interval"


def test_subscription_heartbeat_repeats_an_unchanged_value(
    server: SimulatedOpcUaServer, tmp_path: Path
):
    points = [
        {"id": "recipe", "node": f"{LINE}/Filler/Recipe", "heartbeat": "500ms"},
        {"id": "running", "node": f"{LINE}/Filler/Running"},
    ]
    settings = device(server, points, mode="subscription", interval="100ms")
    samples = run(settings, lambda d: collect(d, 2.2), tmp_path)
    recipes = [s for s in samples if s.point == "recipe"]
    running = [s for s in samples if s.point == "running"]
    assert len(running) == 1, "no heartbeat: only the initial value"
    assert 4 <= len(recipes) <= 6, [s.ts for s in recipes]
    assert {s.value for s in recipes} == {"COLA-0.5L"}
    # The first carries the server's source time; the repeats the time they were confirmed.
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(recipes[1:])]
    assert all(400 <= gap <= 800 for gap in gaps), gaps


def test_reconnecting_leaves_one_subscription_on_the_server(
    server: SimulatedOpcUaServer, tmp_path: Path
):
    points = [{"id": "speed", "node": f"{LINE}/Filler/Speed"}]
    settings = device(server, points, mode="subscription", interval="100ms")

    async def body(driver: OpcUaDriver) -> list[int]:
        counts = []
        for _ in range(3):
            await driver.connect()  # closes the old session first
            await collect(driver, 0.3)
            counts.append(await in_thread(server.subscription_count))
        return counts

    assert run(settings, body, tmp_path) == [1, 1, 1]


def test_writes_convert_to_the_node_data_type(server: SimulatedOpcUaServer, tmp_path: Path):
    def point(path: str, **extra: Any) -> dict[str, Any]:
        return {"id": path.lower(), "node": f"{LINE}/{path.replace('.', '/')}", **extra}

    points = [
        point("Filler.Speed", scale=0.1),  # engineering 12.5 -> raw 125.0
        point("Types.Int16"),
        point("Types.Byte"),
        point("Filler.Running"),
        point("Filler.Recipe"),
        point("Filler.State"),
        point("Filler.Nozzles"),
        point("Labeler.LastBatch"),
        point("Labeler.Signature"),
        {"id": "server.state", "node": "i=2259"},
    ]
    settings = device(server, points)
    by_id = {p.id: p for p in settings.points}

    async def body(driver: OpcUaDriver) -> dict[str, str]:
        await driver.write(by_id["filler.speed"], 12.5)
        await driver.write(by_id["types.int16"], -5)
        await driver.write(by_id["filler.running"], False)
        await driver.write(by_id["filler.recipe"], "WATER-1L")
        await driver.write(by_id["filler.state"], "Fault")
        await driver.write(by_id["filler.nozzles"], [0.5, 0.5, 0.5, 0.5])
        await driver.write(by_id["labeler.lastbatch"], "2026-11-25T08:00:00Z")
        await driver.write(by_id["labeler.signature"], "AAE=")
        errors = {}
        for point_id, value in (
            ("types.byte", 300),
            ("types.int16", 1.5),
            ("filler.state", "Exploded"),
            ("filler.running", "yes"),
        ):
            with pytest.raises(ValueError) as caught:
                await driver.write(by_id[point_id], value)
            errors[point_id] = str(caught.value)
        with pytest.raises(WriteRefused) as refused:
            await driver.write(by_id["server.state"], 0)
        errors["server.state"] = str(refused.value)
        return errors

    errors = run(settings, body, tmp_path)
    assert server.get_value("Filler.Speed") == 125.0
    assert server.get_value("Types.Int16") == -5
    assert server.get_value("Filler.Running") is False
    assert server.get_value("Filler.Recipe") == "WATER-1L"
    assert server.get_value("Filler.State") == 3
    assert server.get_value("Filler.Nozzles") == [0.5, 0.5, 0.5, 0.5]
    assert server.get_value("Labeler.LastBatch") == dt.datetime(2026, 11, 25, 8, tzinfo=dt.UTC)
    assert server.get_value("Labeler.Signature") == b"\x00\x01"
    assert "out of the range of Byte (0..255)" in errors["types.byte"]
    assert "whole numbers" in errors["types.int16"]
    assert "Stopped, Starting, Running, Fault" in errors["filler.state"]
    assert "not a Boolean" in errors["filler.running"]
    assert "refused the write to server.state" in errors["server.state"]


def test_a_frozen_secure_server_is_detected_and_the_session_recovers(tmp_path: Path):
    """`shopfloor simulate opcua --secure --login` in a process of its own, frozen with
    SIGSTOP (a half-open link: the socket stays up, nothing answers), then resumed."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "simulate",
            "opcua",
            "--port",
            str(port),
            "--secure",
            "--pki",
            str(tmp_path / "server-pki"),
            "--login",
            "operator:secret",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(5)]
        assert "certificate" in banner[2] and "SHA-1 thumbprint" in banner[3], banner
        assert "login required: user operator" in banner[4], banner
        pki = Pki(tmp_path / "pki")
        pki.trust((tmp_path / "server-pki" / "server-cert.der").read_bytes())
        (tmp_path / "password").write_text("secret")
        settings = OpcUaDevice.model_validate(
            {
                "name": "line",
                "driver": "opcua",
                "endpoint": f"opc.tcp://127.0.0.1:{port}/shopfloor/packaging-line",
                "mode": "subscription",
                "interval": "100ms",
                "timeout": "1s",
                "keepalive": "1s",
                "security": {"mode": "SignAndEncrypt", "policy": "Aes128_Sha256_RsaOaep"},
                "user": {"username": "operator", "password_file": str(tmp_path / "password")},
                "points": [{"id": "speed", "node": f"{LINE}/Filler/Speed"}],
            }
        )

        async def body(driver: OpcUaDriver) -> tuple[list[Sample], float, list[Sample]]:
            before = await collect(driver, 1.0)
            process.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            with pytest.raises(NotConnected):
                for _ in range(100):
                    await driver.read(settings.points)
                    await asyncio.sleep(0.1)
            detected_after = time.monotonic() - frozen_at
            process.send_signal(signal.SIGCONT)
            await driver.connect()
            return before, detected_after, await collect(driver, 1.0)

        before, detected_after, after = run(settings, body, tmp_path)
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(15)
    assert before and all(s.quality is Quality.GOOD for s in before)
    assert detected_after < 5.0, "the dead link is noticed within a few timeouts"
    assert after and after[-1].quality is Quality.GOOD
