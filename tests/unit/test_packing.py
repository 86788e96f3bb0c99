"""Batches are cut to fit the payload cap, and rows are packed into as few messages as fit."""

from __future__ import annotations

import json
from pathlib import Path

from agent.buffer import LiveBuffer
from agent.model import Quality, Sample
from agent.outbox import Outbox, StoredRow
from agent.pipeline import Batch, encode_rows
from agent.publish.mqtt import MqttPublisher
from agent.publish.payload import Topics, max_message_body, message_payload
from agent.settings import MqttSettings


def test_a_large_poll_is_split_into_rows_that_each_fit_a_message():
    samples = [Sample(f"line.point{i:03d}", i * 1.5, Quality.GOOD, 1000 + i) for i in range(100)]
    rows = encode_rows(Batch("metrics", "plc", samples), max_body=1000)
    assert len(rows) > 1
    assert all(len(row.body) <= 1000 for row in rows)
    decoded = [record for row in rows for record in json.loads(row.body)]
    assert [record["p"] for record in decoded] == [s.point for s in samples]
    assert sum(row.n for row in rows) == 100


def test_rows_are_packed_per_topic_under_the_cap(tmp_path: Path):
    settings = MqttSettings(host="127.0.0.1", max_payload_bytes=1024)
    topics = Topics("test", "gw")
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = MqttPublisher(
        settings,
        client_id="gw",
        topics=topics,
        outbox=outbox,
        buffer=LiveBuffer(outbox),
        session=1,
    )
    body = json.dumps([{"p": "x" * 200, "v": 1, "q": "good", "ts": 1}])  # ~240 bytes
    rows = [StoredRow(i, "metrics", "a" if i % 2 else "b", 1, i, body) for i in range(1, 13)]
    messages = publisher._pack(rows)
    for kind, group in messages:
        payload = message_payload("gw", 1, 1, kind, group)
        assert len(payload) <= 1024
        assert len({row.topic for row in group}) == 1
        assert [row.id for row in group] == sorted(row.id for row in group)
    assert sorted(row.id for _, group in messages for row in group) == list(range(1, 13))
    # 6 rows per topic, 3 fit in a message: 2 messages per topic, not 12.
    assert len(messages) == 4
    assert [group[0].id for _, group in messages] == sorted(group[0].id for _, group in messages)
    assert max_message_body(1024) < 1024


def test_the_backlog_drains_within_its_rate(tmp_path: Path, monkeypatch):
    """A token bucket of one second's worth: 10 messages/s and 4 KiB/s here."""
    clock = [1000.0]
    monkeypatch.setattr("agent.publish.mqtt.time.monotonic", lambda: clock[0])
    settings = MqttSettings(host="127.0.0.1", backlog_messages_per_s=10, backlog_bytes_per_s="4KiB")
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = MqttPublisher(
        settings,
        client_id="gw",
        topics=Topics("test", "gw"),
        outbox=outbox,
        buffer=LiveBuffer(outbox),
        session=1,
    )
    assert [publisher._backlog_allows(100) for _ in range(11)] == [True] * 10 + [False]
    clock[0] += 0.5
    assert [publisher._backlog_allows(100) for _ in range(6)] == [True] * 5 + [False]
    clock[0] += 1.0
    assert publisher._backlog_allows(3000) is True
    assert publisher._backlog_allows(3000) is False, "bytes run out before messages"
    publisher.settings = MqttSettings(host="127.0.0.1", backlog_messages_per_s=0.5)
    clock[0] += 2.0
    assert publisher._backlog_allows(100) is True, "a rate below 1/s still sends"
    unlimited = MqttSettings(host="127.0.0.1", backlog_messages_per_s=0, backlog_bytes_per_s=0)
    publisher.settings = unlimited
    assert all(publisher._backlog_allows(10**9) for _ in range(1000))


def test_backlog_messages_are_marked_historical():
    row = StoredRow(1, "metrics", "plc", 1, 0, '[{"p":"x","v":1,"q":"good","ts":0}]')
    live = json.loads(message_payload("gw", 1, 7, "metrics", [row]))
    old = json.loads(message_payload("gw", 1, 8, "metrics", [row], historical=True))
    assert "historical" not in live
    assert old["historical"] is True and old["samples"] == live["samples"]
