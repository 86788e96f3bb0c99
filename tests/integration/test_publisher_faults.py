"""The publisher against a real broker when the outbox file fails or the publisher itself breaks."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from agent import app as app_module
from agent.app import Agent, AgentFailed
from agent.buffer import LiveBuffer
from agent.config import load_config
from agent.outbox import Outbox, PendingRow, StoredRow
from agent.publish import mqtt as mqtt_module
from agent.publish.mqtt import MqttPublisher
from agent.publish.payload import Topics
from drivers.simulate.broker import free_port
from tests.conftest import modbus_device, write_config


class FlakyDisk(Outbox):
    """An outbox whose reads fail while `failures_left` is above zero (a failing SD card)."""

    failures_left = 0

    def lease(self, after_id: int, limit: int) -> list[StoredRow]:
        if self.failures_left > 0:
            self.failures_left -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return super().lease(after_id, limit)


def backlog_rows(count: int) -> list[PendingRow]:
    return [
        PendingRow("metrics", "plc", 1, i, json.dumps([{"p": "x", "v": i, "q": "good", "ts": i}]))
        for i in range(count)
    ]


def test_a_failing_outbox_pauses_publishing_and_it_resumes(
    broker, subscriber_factory, tmp_path: Path, monkeypatch, caplog
):
    monkeypatch.setattr(mqtt_module, "_DISK_RETRY_S", 0.1)
    device = modbus_device("plc", free_port(), [{"id": "x", "address": "coil:0"}])
    config = load_config(write_config(tmp_path, broker_port=broker.port, devices=[device]))
    outbox = FlakyDisk(tmp_path / "outbox.db")
    outbox.append(backlog_rows(20))
    outbox.failures_left = 3
    subscriber = subscriber_factory(broker.port, topic="test/gw-test/metrics/#")
    subscriber.wait_for(subscriber.connected, what="the subscriber")
    publisher = MqttPublisher(
        config.mqtt,
        client_id="gw-test",
        topics=Topics("test", "gw-test"),
        outbox=outbox,
        buffer=LiveBuffer(outbox),
        session=1,
    )
    with caplog.at_level(logging.INFO, logger="agent.publish.mqtt"):
        publisher.start()
        try:
            subscriber.wait_for(lambda: len(subscriber.samples()) == 20, what="all 20 records")
            subscriber.wait_for(lambda: outbox.stats().rows == 0, what="rows deleted")
        finally:
            publisher.stop(2)
    assert outbox.failures_left == 0
    assert sorted(s["v"] for s in subscriber.samples()) == list(range(20))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Cannot read or update the outbox" in m for m in messages) == 1, "logged once"
    assert sum("publishing resumes" in m for m in messages) == 1


def test_a_broken_publisher_stops_the_agent_with_a_failure(
    broker, subscriber_factory, tmp_path: Path, monkeypatch
):
    config = load_config(
        write_config(
            tmp_path,
            broker_port=broker.port,
            devices=[modbus_device("plc", free_port(), [{"id": "x", "address": "coil:0"}])],
        )
    )
    subscriber = subscriber_factory(broker.port, topic="test/gw-test/status")
    subscriber.wait_for(subscriber.connected, what="the subscriber")
    monkeypatch.setattr(app_module, "SHUTDOWN_DRAIN_S", 1.0)
    agent = Agent(config)
    broken = threading.Event()

    def fill_window_with_a_bug() -> None:
        broken.set()
        raise RuntimeError("a bug in the publisher")

    monkeypatch.setattr(agent.publisher, "_fill_window", fill_window_with_a_bug)

    async def run() -> None:
        stop = asyncio.Event()
        await asyncio.wait_for(agent.run(stop), timeout=20)

    with pytest.raises(AgentFailed, match="a bug in the publisher"):
        asyncio.run(run())
    assert broken.is_set()
    subscriber.wait_for(
        lambda: any(
            s["state"] == "offline" and "publisher failed" in s.get("reason", "")
            for s in subscriber.statuses()
        ),
        what="offline status naming the failure",
    )
