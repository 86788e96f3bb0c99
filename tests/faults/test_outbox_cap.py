"""The outbox cap reached during a long broker outage: the newest data is kept, and what was
dropped is counted exactly, in the outbox file, in health and in the overflow events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Subscriber, modbus_device, write_config
from tests.faults.test_outages import (
    accepted_records,
    outbox_db,
    received_records,
    ten_hz_points,
)


def dropped_records(tmp_path: Path) -> dict[str, int]:
    rows = outbox_db(tmp_path).query("SELECT key, value FROM meta WHERE key LIKE 'dropped_%'")
    return {row["key"].removeprefix("dropped_"): int(row["value"]) for row in rows}


def overflow_events(subscriber: Subscriber) -> list[dict[str, Any]]:
    return [
        event
        for message in subscriber.snapshot()
        if message.topic.endswith("/events/outbox_overflow")
        for event in message.payload["events"]
    ]


@pytest.mark.slow
def test_cap_reached_during_an_outage_keeps_the_newest_and_counts_exactly(
    persistent_broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    config = write_config(
        tmp_path,
        broker_port=persistent_broker.port,
        devices=[modbus_device("plc", modbus.port, ten_hz_points(20))],
        outbox={"max_bytes": "96KiB"},  # about 7 s of 20 points at 10 Hz
    )
    subscriber = subscriber_factory(persistent_broker.port, persistent=True)
    agent = agent_factory(config)
    agent.start()
    subscriber.wait_for(lambda: len(subscriber.metrics()) >= 10, what="data flowing")
    persistent_broker.stop()
    time.sleep(16)
    persistent_broker.start()
    subscriber.wait_for(lambda: overflow_events(subscriber), timeout=20, what="overflow events")
    time.sleep(3)
    assert agent.stop() == 0
    subscriber.wait_for(
        lambda: _all_arrived_or_dropped(subscriber, tmp_path),
        timeout=20,
        what="every record that was not dropped",
    )
    accepted = accepted_records(tmp_path)
    dropped = dropped_records(tmp_path)
    received = received_records(subscriber)
    assert dropped.get("metrics", 0) > 20 * 10 * 3, "several seconds were dropped"
    assert dropped.get("events", 0) == 0, "events are kept longest"
    assert len(received) + dropped["metrics"] == accepted, "each record arrived or was dropped"

    events = overflow_events(subscriber)
    assert sum(e["data"]["records"] for e in events) == dropped["metrics"]
    assert all(e["data"]["class"] == "metrics" for e in events)
    first = min(e["data"]["from_ts"] for e in events)
    last = max(e["data"]["to_ts"] for e in events)
    sample_times = sorted({key[2] for key in received if key[0] == "sample"})
    assert not [ts for ts in sample_times if first <= ts <= last], "exactly that range is gone"
    assert [ts for ts in sample_times if ts > last], "the newest data arrived"
    assert "Dropping the oldest unsent records" in agent.log()
    assert agent.log().count("Dropping the oldest unsent records") == 1, "once per episode"
    healths = [m.payload for m in subscriber.snapshot() if m.topic.endswith("/health")]
    assert any(h["outbox"]["dropped"]["metrics"] > 0 for h in healths)


def _all_arrived_or_dropped(subscriber: Subscriber, tmp_path: Path) -> bool:
    dropped = sum(dropped_records(tmp_path).values())
    return len(received_records(subscriber)) + dropped >= accepted_records(tmp_path)
