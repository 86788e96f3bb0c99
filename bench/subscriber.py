"""The benchmarks' MQTT subscriber: what a subject's metric messages bring to the broker, and when.

The agent and the bare scripts publish the agent's payload shape,
`{"agent", "session", "seq", "samples": [{"p", "v", "q", "ts"}, ...]}`; the subscriber counts
the samples that arrive in a measurement window, the BAD ones, the messages, and the latency of
each sample (its arrival wall time minus its `ts`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["Subscriber", "Window", "percentile"]


@dataclass
class Window:
    """What arrived in one measurement window."""

    samples: int = 0
    bad: int = 0
    # With `track_values`: a point's value with a source timestamp already received.
    duplicates: int = 0
    messages: int = 0
    # Latency in tenths of a millisecond -> number of samples with it.
    latency: Counter[int] = field(default_factory=Counter)


def subscribed_client(
    port: int, topic: str, name: str, on_message: Callable[..., None]
) -> mqtt.Client:
    """A paho client of 127.0.0.1:`port` subscribed to `topic` (QoS 1), its network loop
    running, handing every message to `on_message`; raises RuntimeError naming `name` if it
    could not subscribe within 10 s."""
    subscribed = threading.Event()
    client_id = f"bench-{name.replace(' ', '-')}-{os.getpid()}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_connect = lambda connected, *_: connected.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(10):
        client.disconnect()
        client.loop_stop()
        raise RuntimeError(f"the {name} could not subscribe on port {port}")
    return client


class Subscriber:
    """Counts the metric messages of one publisher as they arrive at the broker, in a window.

    With `track_values` it also records, over the whole run, which points arrived with which
    source timestamp (the OPC UA benchmark's server writes all values of a tick with the same
    one): for `delivered`, and to count the values received twice.
    """

    def __init__(self, port: int, topic: str, *, track_values: bool = False) -> None:
        self._lock = threading.Lock()
        self._first = threading.Event()
        self.first_arrival: float | None = None  # time.monotonic()
        self._window: Window | None = None
        self._track_values = track_values
        self._points_by_ts: dict[int, set[str]] = {}
        self.errors = 0
        self._client = subscribed_client(port, topic, "subscriber", self._on_message)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_first(self, timeout: float) -> float | None:
        """time.monotonic() at which the first metric message arrived, or None."""
        self._first.wait(timeout)
        return self.first_arrival

    def begin(self) -> None:
        with self._lock:
            self._window = Window()

    def end(self) -> Window:
        with self._lock:
            window, self._window = self._window, None
        assert window is not None
        return window

    def delivered(self, after_ts: int, until_ts: int) -> int:
        """Distinct values (point, source timestamp) received with a timestamp in
        (after_ts, until_ts]: a value received twice counts once (needs `track_values`)."""
        with self._lock:
            return sum(
                len(points)
                for ts, points in self._points_by_ts.items()
                if after_ts < ts <= until_ts
            )

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        arrival_ms = time.time_ns() / 1e6
        if self.first_arrival is None:
            self.first_arrival = time.monotonic()
            self._first.set()
        try:
            samples = json.loads(message.payload)["samples"]
            stamps = Counter(sample["ts"] for sample in samples)
            values = (
                [(sample["p"], sample["ts"]) for sample in samples] if self._track_values else []
            )
            bad = sum(1 for sample in samples if sample["q"] != "good")
        except (ValueError, KeyError, TypeError):
            self.errors += 1
            return
        with self._lock:
            duplicates = self._remember(values)
            window = self._window
            if window is None:
                return
            window.messages += 1
            window.samples += len(samples)
            window.bad += bad
            window.duplicates += duplicates
            for ts, count in stamps.items():
                window.latency[round((arrival_ms - ts) * 10)] += count

    def _remember(self, values: list[tuple[str, int]]) -> int:
        """Record the values (point, source timestamp); the number already received."""
        duplicates = 0
        for point, ts in values:
            points = self._points_by_ts.setdefault(ts, set())
            if point in points:
                duplicates += 1
            else:
                points.add(point)
        return duplicates


def percentile(histogram: Counter[int], fraction: float) -> float | None:
    """The `fraction` quantile (nearest rank) of a histogram in tenths of a millisecond, in ms."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, int(fraction * total + 0.999999))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value / 10
    return max(histogram) / 10
