"""Outages of the broker, the PLC and the agent itself: nothing committed is lost.

Counting works on three levels: every message sequence number of a session arrives, every
record the agent took in arrives (the outbox file counts them in its meta table, whether they
were committed or acknowledged straight from memory), and duplicates stay within one in-flight
window.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from tests.conftest import Subscriber, modbus_device, write_config

MAX_INFLIGHT = 20


def outbox_db(tmp_path: Path) -> sqlite_utils.Database:
    return sqlite_utils.Database(tmp_path / "data" / "outbox.db")


def accepted_records(tmp_path: Path) -> int:
    rows = list(outbox_db(tmp_path).query("SELECT value FROM meta WHERE key = 'accepted_records'"))
    return int(rows[0]["value"]) if rows else 0


def record_key(topic: str, record: dict[str, Any]) -> tuple[Any, ...]:
    if "/metrics/" in topic:
        return ("sample", record["p"], record["ts"])
    return ("event", record["source"], record["kind"], record["ts"], record["message"])


def received_records(subscriber: Subscriber) -> Counter[tuple[Any, ...]]:
    counts: Counter[tuple[Any, ...]] = Counter()
    for message in subscriber.snapshot():
        if "/metrics/" in message.topic:
            for sample in message.payload["samples"]:
                counts[record_key(message.topic, sample)] += 1
        elif "/events/" in message.topic:
            for event in message.payload["events"]:
                counts[record_key(message.topic, event)] += 1
    return counts


def data_messages(subscriber: Subscriber) -> list[dict[str, Any]]:
    return [
        m.payload for m in subscriber.snapshot() if "/metrics/" in m.topic or "/events/" in m.topic
    ]


def ten_hz_points(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"p{index:02d}", "address": f"holding:{index * 2}", "type": "float32"}
        for index in range(count)
    ]


@pytest.mark.slow
def test_broker_down_60s_with_200_points_at_10hz_loses_nothing(
    persistent_broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    config = write_config(
        tmp_path,
        broker_port=persistent_broker.port,
        devices=[modbus_device("plc", modbus.port, ten_hz_points(200))],
        mqtt={"max_inflight": MAX_INFLIGHT},
    )
    subscriber = subscriber_factory(persistent_broker.port, persistent=True)
    agent = agent_factory(config)
    agent.start()
    subscriber.wait_for(lambda: len(subscriber.metrics()) >= 10, what="data flowing")
    persistent_broker.stop()
    time.sleep(60)
    persistent_broker.start()
    time.sleep(6)  # live data and the backlog of 600 polls (120,000 samples)
    assert agent.stop() == 0
    subscriber.wait_for(
        lambda: sum(received_records(subscriber).values()) and _all_arrived(subscriber, tmp_path),
        timeout=20,
        what="every accepted record at the subscriber",
    )
    accepted = accepted_records(tmp_path)
    received = received_records(subscriber)
    assert accepted > 200 * 10 * 60, "over 66 s of 200 points at 10 Hz"
    assert len(received) == accepted, "each record the agent took in arrives (once at least)"
    assert outbox_db(tmp_path)["outbox"].count == 0
    messages = data_messages(subscriber)
    seqs = Counter(m["seq"] for m in messages)
    assert set(seqs) == set(range(1, max(seqs) + 1)), "no sequence number is missing"
    duplicates = sum(count - 1 for count in seqs.values())
    assert duplicates <= MAX_INFLIGHT
    assert "Lost the connection to the MQTT broker" in agent.log()
    # The outage's backlog is marked historical; live data is not.
    assert any(m.get("historical") for m in messages)
    assert not all(m.get("historical") for m in messages)


def _all_arrived(subscriber: Subscriber, tmp_path: Path) -> bool:
    return len(received_records(subscriber)) >= accepted_records(tmp_path)


@pytest.mark.slow
def test_sigkill_during_outage_then_restart_delivers_all_committed(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    config = write_config(
        tmp_path,
        broker_port=broker.port,
        devices=[modbus_device("plc", modbus.port, ten_hz_points(5))],
    )
    broker.stop()
    agent = agent_factory(config)
    agent.start()
    time.sleep(3)
    agent.kill()
    stored: set[tuple[Any, ...]] = set()
    for row in outbox_db(tmp_path)["outbox"].rows:
        topic = f"/{row['kind']}/"
        for record in json.loads(row["body"]):
            stored.add(record_key(topic, record))
    assert len(stored) >= 5 * 20, "about 3 s of 5 points at 10 Hz were committed"
    broker.start()
    subscriber = subscriber_factory(broker.port)
    subscriber.wait_for(subscriber.connected, what="subscriber connected")
    restarted = agent_factory(config)
    restarted.start()
    subscriber.wait_for(
        lambda: stored <= set(received_records(subscriber)),
        timeout=15,
        what="every record committed before the SIGKILL",
    )
    sessions = {m["session"] for m in data_messages(subscriber)}
    assert len(sessions) == 1, "the backlog is sent by the new session"
    assert restarted.stop() == 0


def test_last_will_says_offline_when_the_agent_is_killed(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    config = write_config(
        tmp_path,
        broker_port=broker.port,
        devices=[modbus_device("plc", modbus.port, ten_hz_points(1))],
    )
    subscriber = subscriber_factory(broker.port)
    agent = agent_factory(config)
    agent.start()
    subscriber.wait_for(
        lambda: subscriber.statuses() and subscriber.statuses()[-1]["state"] == "online",
        what="online status",
    )
    session = subscriber.statuses()[-1]["session"]
    agent.kill()
    subscriber.wait_for(
        lambda: subscriber.statuses()[-1]["state"] == "offline", timeout=5, what="the last will"
    )
    will = subscriber.statuses()[-1]
    assert will["session"] == session
    assert will["reason"] == "connection lost"
    # Retained: a newcomer sees the offline state too.
    late = subscriber_factory(broker.port, topic="test/gw-test/status")
    late.wait_for(lambda: bool(late.statuses()), what="retained status")
    assert late.statuses()[-1]["state"] == "offline"
    assert late.snapshot()[-1].retain


@pytest.mark.slow
def test_plc_restart_gives_bad_then_good_and_spares_the_other_device(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    from drivers.simulate.broker import free_port
    from drivers.simulate.modbus import SimulatedModbusServer

    modbus.set_value("holding", 0, 7.0, "float32")
    with SimulatedModbusServer(free_port()) as other:
        other.set_value("holding", 0, 9.0, "float32")
        config = write_config(
            tmp_path,
            broker_port=broker.port,
            devices=[
                modbus_device(
                    "plc_a", modbus.port, [{"id": "a", "address": "holding:0", "type": "float32"}]
                ),
                modbus_device(
                    "plc_b", other.port, [{"id": "b", "address": "holding:0", "type": "float32"}]
                ),
            ],
        )
        subscriber = subscriber_factory(broker.port)
        agent = agent_factory(config)
        agent.start()
        subscriber.wait_for(lambda: subscriber.samples_of("a"), what="first sample of a")
        modbus.stop()
        stopped_at = time.time() * 1000
        subscriber.wait_for(
            lambda: any(s["q"] == "bad" for s in subscriber.samples_of("a")),
            timeout=5,
            what="BAD samples while the PLC is gone",
        )
        time.sleep(3)
        modbus.start()
        restarted_at = time.time() * 1000
        subscriber.wait_for(
            lambda: any(
                s["q"] == "good" and s["ts"] > restarted_at for s in subscriber.samples_of("a")
            ),
            timeout=5,
            what="GOOD samples within a few seconds of the PLC's return",
        )
        outage = [
            s for s in subscriber.samples_of("a") if stopped_at + 500 < s["ts"] < restarted_at
        ]
        assert outage, "samples keep coming while the PLC is gone"
        assert all(s["q"] == "bad" and s["v"] is None and s.get("r") for s in outage)
        b_during = [s for s in subscriber.samples_of("b") if stopped_at < s["ts"] < restarted_at]
        assert all(s["q"] == "good" and s["v"] == 9.0 for s in subscriber.samples_of("b"))
        # plc_b kept its 10 Hz pace through plc_a's outage (allowing for a loaded CI machine).
        assert len(b_during) >= 0.7 * (restarted_at - stopped_at) / 100
        link_events = [
            e
            for m in subscriber.snapshot()
            if m.topic == "test/gw-test/events/link"
            for e in m.payload["events"]
        ]
        states = [(e["source"], e["data"]["state"]) for e in link_events]
        assert ("plc_a", "disconnected") in states
        assert states.count(("plc_a", "connected")) == 2
        log = agent.log()
        assert log.lower().count("device plc_a (") == 3, "connected, unreachable, back: once each"
        assert agent.stop() == 0
