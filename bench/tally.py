"""A lean MQTT subscriber that tallies every record a publisher delivers, message by message.

`bench.subscriber.Subscriber` parses each sample to measure latency in a window; the drain and
soak benchmarks need something else: every record of a run accounted for, at rates (50,000
samples/s and more) where parsing each sample in this process would compete with the agent
for the CPU. `Tally` therefore reads a message's head with a regular expression and counts its
records in C (`bytes.count`):

- records, messages and BAD samples per topic (`.../metrics/{device}`, `.../events/{kind}`);
- messages received twice (the same session and `seq`), whose records are not counted again;
- the first and last arrival (time.monotonic()) per topic; for one topic, `done_topic`, a call
  of `on_first` at its first message and an event once it has received `done_records`;
- oldest-first order: a message whose first record is older than the last record of the
  message before it on the same topic counts as out of order;
- on the topics that contain `latency_topic` (e.g. `/metrics/`), each record's arrival wall
  time minus its `ts`, as a histogram in tenths of a millisecond (read by
  `bench.subscriber.percentile`).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from bench.subscriber import subscribed_client

__all__ = ["Tally", "TopicTally"]

_HEAD = re.compile(rb'"session":(\d+),"seq":(\d+)')
_TS = re.compile(rb'"ts":(\d+)')
_RECORD = b'"ts":'  # one per record; inside a JSON string it would be escaped (\"ts\":)
_BAD = b'"q":"bad"'


@dataclass
class TopicTally:
    """What arrived on one topic."""

    records: int = 0
    messages: int = 0
    bad: int = 0
    duplicate_messages: int = 0
    duplicate_records: int = 0
    out_of_order: int = 0
    first_arrival: float | None = None  # time.monotonic()
    last_arrival: float | None = None
    last_ts: int = 0
    latency: Counter[int] = field(default_factory=Counter)


class Tally:
    """Subscribes to `topic` (a filter, e.g. `bench/agent1/#`) at QoS 1 and tallies the metric
    and event messages below it; other messages (status, health) are only counted."""

    def __init__(
        self,
        port: int,
        topic: str,
        *,
        latency_topic: str | None = None,
        done_topic: str | None = None,
        done_records: int = 0,
        on_first: Callable[[], object] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.done = threading.Event()  # set once `done_topic` has `done_records` records
        self._done_topic = done_topic
        self._done_records = done_records
        self._on_first = on_first
        self._latency_topic = latency_topic
        self._seen: set[tuple[int, int]] = set()
        self.topics: dict[str, TopicTally] = {}
        self.other_messages = 0
        self.unreadable = 0
        self._client = subscribed_client(port, topic, "tally", self._on_message)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def topic(self, suffix: str) -> TopicTally:
        """The tally of the topic ending in `suffix` (e.g. `/metrics/line1`); empty if none."""
        with self._lock:
            for name, tally in self.topics.items():
                if name.endswith(suffix):
                    return tally
        return TopicTally()

    def total(self, kind: str) -> TopicTally:
        """All topics of one kind (`metrics` or `events`) added up (arrival times left out)."""
        total = TopicTally()
        with self._lock:
            for name, tally in self.topics.items():
                if f"/{kind}/" in name:
                    total.records += tally.records
                    total.messages += tally.messages
                    total.bad += tally.bad
                    total.duplicate_messages += tally.duplicate_messages
                    total.duplicate_records += tally.duplicate_records
                    total.out_of_order += tally.out_of_order
                    total.latency.update(tally.latency)
        return total

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        arrival = time.monotonic()
        topic = message.topic
        if "/metrics/" not in topic and "/events/" not in topic:
            with self._lock:
                self.other_messages += 1
            return
        payload = message.payload
        head = _HEAD.search(payload, 0, 200)
        timed = self._latency_topic is not None and self._latency_topic in topic
        stamps = _TS.findall(payload) if timed else None
        if head is None:
            with self._lock:
                self.unreadable += 1
            return
        records = payload.count(_RECORD)
        first = _TS.search(payload)
        last = _TS.match(payload, max(0, payload.rfind(_RECORD)))
        first_ts = int(first.group(1)) if first else 0
        last_ts = int(last.group(1)) if last else 0
        key = (int(head.group(1)), int(head.group(2)))
        is_done_topic = self._done_topic is not None and topic.endswith(self._done_topic)
        if is_done_topic and self._on_first is not None:
            on_first, self._on_first = self._on_first, None
            on_first()
        with self._lock:
            tally = self.topics.setdefault(topic, TopicTally())
            if key in self._seen:
                tally.duplicate_messages += 1
                tally.duplicate_records += records
                return
            self._seen.add(key)
            tally.messages += 1
            tally.records += records
            tally.bad += payload.count(_BAD)
            if tally.first_arrival is None:
                tally.first_arrival = arrival
            tally.last_arrival = arrival
            if first_ts < tally.last_ts:
                tally.out_of_order += 1
            tally.last_ts = max(tally.last_ts, last_ts)
            if stamps:
                arrival_ms = time.time_ns() / 1e6
                for ts in stamps:
                    tally.latency[round((arrival_ms - int(ts)) * 10)] += 1
            if is_done_topic and tally.records >= self._done_records:
                self.done.set()
