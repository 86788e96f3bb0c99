"""OPC UA servers that behave as the standard allows but the simulator does not by default:
a Read of nothing refused, a publishing interval revised, publications that stop arriving.
The in-process simulator's asyncua internals are patched for one test at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.common import subscription as client_subscription
from asyncua.common.utils import ServiceError
from asyncua.server import internal_session, subscription_service
from asyncua.ua.status_codes import StatusCodes

from agent.model import Quality, Sample
from agent.settings import OpcUaDevice
from drivers.base import NotConnected
from drivers.opcua.client import OpcUaDriver
from drivers.opcua.security import Pki
from drivers.simulate.broker import free_port
from drivers.simulate.opcua import SimulatedOpcUaServer

LINE = "/Objects/PackagingLine"


@pytest.fixture
def server() -> Iterator[SimulatedOpcUaServer]:
    with SimulatedOpcUaServer(free_port()) as started:
        yield started


def device(server: SimulatedOpcUaServer, mode: str, points: list[dict[str, Any]], **extra: Any):
    return OpcUaDevice.model_validate(
        {
            "name": "line",
            "driver": "opcua",
            "endpoint": server.endpoint,
            "timeout": "1s",
            "mode": mode,
            "interval": "100ms",
            "keepalive": "1s",
            "resolve_retry": "300ms",
            "points": points,
            **extra,
        }
    )


async def read_for(driver: OpcUaDriver, seconds: float) -> list[Sample]:
    samples: list[Sample] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples += await driver.read(driver.device.points)
        await asyncio.sleep(0.05)
    return samples


@pytest.mark.parametrize("mode", ["polling", "subscription"])
def test_a_server_that_refuses_empty_reads_keeps_the_session(
    server: SimulatedOpcUaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
):
    """Part 4 5.10.2: a Read of no nodes is Bad_NothingToDo. With every point missing there
    is nothing to read; the agent must not send that Read and take the fault for a lost link."""
    original = internal_session.InternalSession.read

    async def strict_read(self: Any, params: ua.ReadParameters) -> Any:
        if not params.NodesToRead:
            raise ServiceError(StatusCodes.BadNothingToDo)
        return await original(self, params)

    monkeypatch.setattr(internal_session.InternalSession, "read", strict_read)
    settings = device(server, mode, [{"id": "torque", "node": f"{LINE}/Filler/Torque"}])

    async def main() -> list[Sample]:
        driver = OpcUaDriver(settings, Pki(tmp_path / "pki"))
        await driver.connect()
        try:
            return await read_for(driver, 1.2)  # several lookups again (resolve_retry 300ms)
        finally:
            await driver.close()

    samples = asyncio.run(main())
    assert samples and all(s.quality is Quality.BAD for s in samples)
    assert "no child named 'Torque'" in str(samples[-1].reason)


def test_a_revised_publishing_interval_gives_no_false_silence_alarm(
    server: SimulatedOpcUaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A server with a 100 ms minimum revises a 50 ms request; asyncua then changes the
    keep-alive to one of its own. The agent sets its own again and watches for that."""
    service = subscription_service.SubscriptionService
    create, modify = service.create_subscription, service.modify_subscription

    async def with_minimum(self: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        params.RequestedPublishingInterval = max(params.RequestedPublishingInterval, 100.0)
        return await create(self, params, *args, **kwargs)

    def applying(self: Any, params: Any) -> Any:  # asyncua's server ignores the keep-alive
        self.subscriptions[
            params.SubscriptionId
        ].data.RevisedMaxKeepAliveCount = params.RequestedMaxKeepAliveCount
        return modify(self, params)

    monkeypatch.setattr(service, "create_subscription", with_minimum)
    monkeypatch.setattr(service, "modify_subscription", applying)
    settings = device(
        server, "subscription", [{"id": "recipe", "node": f"{LINE}/Filler/Recipe"}], interval="50ms"
    )

    async def main() -> list[Sample]:
        driver = OpcUaDriver(settings, Pki(tmp_path / "pki"))
        await driver.connect()
        try:
            return await read_for(driver, 5.0)  # quiet: keep-alives only, every second
        finally:
            await driver.close()

    samples = asyncio.run(main())
    assert [s.value for s in samples] == ["COLA-0.5L"]


def test_publications_that_stop_are_detected_and_not_confirmed_by_heartbeats(
    server: SimulatedOpcUaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    muted = False
    original = client_subscription.Subscription.publish_callback

    async def publish_callback(self: Any, result: Any) -> None:
        if not muted:
            await original(self, result)

    monkeypatch.setattr(client_subscription.Subscription, "publish_callback", publish_callback)
    settings = device(
        server,
        "subscription",
        [{"id": "recipe", "node": f"{LINE}/Filler/Recipe", "heartbeat": "500ms"}],
    )

    async def main() -> tuple[list[Sample], float]:
        nonlocal muted
        driver = OpcUaDriver(settings, Pki(tmp_path / "pki"))
        await driver.connect()
        samples = await read_for(driver, 1.5)
        muted = True
        muted_at = time.monotonic()
        try:
            with pytest.raises(NotConnected, match="silent"):
                while True:
                    samples += await driver.read(settings.points)
                    await asyncio.sleep(0.05)
        finally:
            await driver.close()
        return samples, time.monotonic() - muted_at

    samples, detected_after = asyncio.run(main())
    assert detected_after < 6.0, "within three keep-alives and a timeout"
    heartbeats = [s for s in samples if s.ts > samples[0].ts]
    assert heartbeats, "heartbeats while publications came"
    # None confirmed long after the last publication: at most 1.5 keep-alives + an interval.
    last_confirmed = max(s.ts for s in heartbeats) / 1000
    assert last_confirmed - (time.time() - detected_after) <= 1.5 + 0.1 + 0.2


def test_after_a_reconnect_a_vanished_node_gets_no_heartbeat(
    server: SimulatedOpcUaServer, tmp_path: Path
):
    settings = device(
        server,
        "subscription",
        [
            {"id": "count", "node": f"{LINE}/Filler/Count", "heartbeat": "200ms"},
            {"id": "speed", "node": f"{LINE}/Filler/Speed"},
        ],
        resolve_retry="1m",
    )

    async def main() -> list[Sample]:
        driver = OpcUaDriver(settings, Pki(tmp_path / "pki"))
        await driver.connect()
        try:
            await read_for(driver, 0.5)
            await asyncio.to_thread(server.delete_variable, "Filler.Count")
            await driver.connect()
            return await read_for(driver, 1.0)
        finally:
            await driver.close()

    counts = [s for s in asyncio.run(main()) if s.point == "count"]
    assert counts and all(s.quality is Quality.BAD for s in counts)


def test_polling_reads_all_points_with_one_request_per_cycle(
    server: SimulatedOpcUaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Counted on the server: each cycle is one Read service call carrying every point."""
    from drivers.simulate.opcua import PACKAGING_LINE

    reads: list[int] = []
    original = internal_session.InternalSession.read

    async def counting_read(self: Any, params: ua.ReadParameters) -> Any:
        probe = [r.NodeId for r in params.NodesToRead] == [ua.NodeId(2259)]
        if not probe:  # asyncua's own once-a-second check of the server state
            reads.append(len(params.NodesToRead))
        return await original(self, params)

    points = [
        {"id": v.path.lower(), "node": f"{LINE}/{v.path.replace('.', '/')}"} for v in PACKAGING_LINE
    ]
    settings = device(server, "polling", points)

    async def main() -> None:
        driver = OpcUaDriver(settings, Pki(tmp_path / "pki"))
        await driver.connect()
        try:
            monkeypatch.setattr(internal_session.InternalSession, "read", counting_read)
            for _ in range(5):
                samples = await driver.read(settings.points)
                assert all(s.quality is Quality.GOOD for s in samples)
        finally:
            monkeypatch.undo()
            await driver.close()

    asyncio.run(main())
    assert reads == [len(PACKAGING_LINE)] * 5


@pytest.mark.parametrize("mode", ["polling", "subscription"])
def test_a_session_the_server_ended_is_replaced(
    server: SimulatedOpcUaServer, tmp_path: Path, mode: str
):
    settings = device(server, mode, [{"id": "speed", "node": f"{LINE}/Filler/Speed"}])

    async def main() -> tuple[float, list[Sample], int]:
        driver = OpcUaDriver(settings, Pki(tmp_path / "pki"))
        await driver.connect()
        try:
            await read_for(driver, 0.5)
            assert await asyncio.to_thread(server.expire_sessions) == 1
            expired_at = time.monotonic()
            with pytest.raises(NotConnected):
                for _ in range(200):
                    await driver.read(settings.points)
                    await asyncio.sleep(0.05)
            noticed_after = time.monotonic() - expired_at
            await driver.connect()
            await asyncio.to_thread(server.set_value, "Filler.Speed", 130.0)
            after = await read_for(driver, 1.0)
            return noticed_after, after, await asyncio.to_thread(server.subscription_count)
        finally:
            await driver.close()

    noticed_after, after, subscriptions = asyncio.run(main())
    assert noticed_after < 5.0
    assert after[-1].value == 130.0 and after[-1].quality is Quality.GOOD
    assert subscriptions == (1 if mode == "subscription" else 0)
