"""The MQTT link against a real Mosquitto: a frozen broker (SIGSTOP) is detected by the watchdog
and nothing is lost; a client-id takeover is logged once per episode (MQTT 5 and 3.1.1);
paho's network thread survives a failing callback and is replaced if it dies; reconnect
delays carry full jitter; an idle link is kept alive by pings, not torn down by the watchdog.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import random
import re
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.buffer import LiveBuffer
from agent.config import load_config
from agent.outbox import Outbox, PendingRow
from agent.publish.link import Backoff, Link
from agent.publish.mqtt import MqttPublisher
from agent.publish.payload import Topics
from agent.settings import MqttSettings
from drivers.simulate.broker import free_port
from tests.conftest import modbus_device, write_config
from tests.faults.test_outages import (
    accepted_records,
    data_messages,
    outbox_db,
    received_records,
    ten_hz_points,
)

MAX_INFLIGHT = 20
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def logged_at(log: str, fragment: str, after: float = 0.0) -> float | None:
    """time.time() of the first agent log line containing `fragment` at or after `after`."""
    for line in log.splitlines():
        match = _LOG_TIME.match(line)
        if match and fragment in line:
            at = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if at >= after - 0.001:
                return at
    return None


def assert_nothing_lost(subscriber: Any, tmp_path: Path) -> dict[str, int]:
    """Every record the agent took in arrived, every sequence number of the session arrived,
    duplicates stay within one in-flight window. Returns the counts."""
    accepted = accepted_records(tmp_path)
    received = received_records(subscriber)
    assert len(received) == accepted, "each record the agent took in arrives (once at least)"
    assert outbox_db(tmp_path)["outbox"].count == 0
    seqs = Counter(m["seq"] for m in data_messages(subscriber))
    assert set(seqs) == set(range(1, max(seqs) + 1)), "no sequence number is missing"
    duplicates = sum(count - 1 for count in seqs.values())
    assert duplicates <= MAX_INFLIGHT
    return {"accepted": accepted, "messages": max(seqs), "duplicate_messages": duplicates}


@pytest.mark.slow
def test_a_frozen_broker_is_detected_and_nothing_is_lost(
    persistent_broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    keepalive = 5
    config = write_config(
        tmp_path,
        broker_port=persistent_broker.port,
        devices=[modbus_device("plc", modbus.port, ten_hz_points(5))],
        mqtt={"keepalive": f"{keepalive}s", "max_inflight": MAX_INFLIGHT},
    )
    subscriber = subscriber_factory(persistent_broker.port, persistent=True)
    agent = agent_factory(config)
    agent.start()
    subscriber.wait_for(lambda: len(subscriber.metrics()) >= 10, what="data flowing")
    frozen_at = time.time()
    persistent_broker.pause()  # SIGSTOP: the TCP connection stays open, nothing is answered
    time.sleep(3 * keepalive)
    persistent_broker.resume()
    resumed_at = time.time()
    subscriber.wait_for(
        lambda: logged_at(agent.log(), "Connected to the MQTT broker", after=resumed_at),
        timeout=15,
        what="the agent reconnected after the broker came back",
    )
    time.sleep(2)  # live data and the backlog of the freeze
    assert agent.stop() == 0
    subscriber.wait_for(
        lambda: len(received_records(subscriber)) >= accepted_records(tmp_path),
        timeout=20,
        what="every accepted record at the subscriber",
    )
    counts = assert_nothing_lost(subscriber, tmp_path)
    assert counts["accepted"] > 5 * 10 * 15, "about 20 s of 5 points at 10 Hz"
    log = agent.log()
    detected = logged_at(log, "has sent nothing for", after=frozen_at)
    reconnected = logged_at(log, "Connected to the MQTT broker", after=resumed_at)
    assert detected is not None and reconnected is not None
    # The watchdog, not paho's own keep-alive (2 keep-alives), ends the dead connection.
    assert 1.5 * keepalive - 0.5 <= detected - frozen_at <= 1.5 * keepalive + 1.5
    print(
        f"frozen broker: detected after {detected - frozen_at:.1f} s, reconnected "
        f"{reconnected - resumed_at:.1f} s after SIGCONT, {counts}"
    )
    assert log.count("has sent nothing for") == 1
    assert " ERROR " not in log


class Intruder:
    """Another MQTT client that keeps connecting with the agent's client id, as a second
    gateway with a copied configuration would (it reconnects 1 s after being kicked)."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


TAKEOVER = "another client probably uses this agent's client id gw-test"


@pytest.mark.slow
@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_a_client_id_takeover_is_logged_once_per_episode(
    version, broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    config = write_config(
        tmp_path,
        broker_port=broker.port,
        devices=[modbus_device("plc", modbus.port, ten_hz_points(2))],
        mqtt={"version": version, "keepalive": "5s", "max_inflight": MAX_INFLIGHT},
    )
    subscriber = subscriber_factory(broker.port, topic="test/gw-test/#")
    agent = agent_factory(config)
    agent.start()
    subscriber.wait_for(lambda: len(subscriber.metrics()) >= 5, what="data flowing")
    intruder = Intruder(broker.port, "gw-test")
    try:
        subscriber.wait_for(
            lambda: TAKEOVER in agent.log(), timeout=20, what="the takeover ERROR line"
        )
        time.sleep(4)  # the two clients keep kicking each other out
    finally:
        intruder.close()
    gone_after = time.time()
    subscriber.wait_for(
        lambda: "the other client is gone" in agent.log(), timeout=20, what="the recovery line"
    )
    recovered_at = logged_at(agent.log(), "the other client is gone")
    assert recovered_at is not None
    subscriber.wait_for(
        lambda: any(m.arrived > recovered_at for m in subscriber.metrics()),
        what="data flowing again",
    )
    assert agent.stop() == 0
    subscriber.wait_for(
        lambda: len(received_records(subscriber)) >= accepted_records(tmp_path),
        timeout=20,
        what="every accepted record at the subscriber",
    )
    assert_nothing_lost(subscriber, tmp_path)
    log = agent.log()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert TAKEOVER in errors[0]
    # Mosquitto 2.0 closes the old connection without a reason, also for MQTT 5: the agent
    # recognises the pattern at the third kick; after that no kick is logged until it ends.
    detected_at = logged_at(log, TAKEOVER)
    assert detected_at is not None
    assert logged_at(log, "Lost the connection", after=detected_at) is None
    assert log.count("Lost the connection to the MQTT broker") <= 2
    print(f"takeover ({version}): recovery logged {recovered_at - gone_after:.1f} s after")


def test_mqtt5_session_taken_over_is_recognised_at_once(caplog):
    """Brokers that send DISCONNECT 0x8E (EMQX, HiveMQ, newer Mosquitto) name the takeover:
    no need to wait for a pattern. Mosquitto 2.0.11 does not send it, so this drives the link
    with the reason code paho would report."""
    settings = MqttSettings(host="127.0.0.1", keepalive=5, reconnect_max=1)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-test")
    link = Link(client, settings, client_id="gw-test", on_lost=lambda _reason: None)
    taken_over = ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)
    with caplog.at_level(logging.INFO, logger="agent.publish.mqtt"):
        for _ in range(3):
            link.up()
            assert link.down(taken_over, was_up=True) is False, "not logged one by one"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "with this agent's client id gw-test" in errors[0] and "0x8E" in errors[0]
    assert link.quiet and link.takeovers == 3


# -- the publisher in this process --------------------------------------------------------------


def backlog_rows(count: int, start: int = 0) -> list[PendingRow]:
    return [
        PendingRow("metrics", "plc", 1, i, json.dumps([{"p": "x", "v": i, "q": "good", "ts": i}]))
        for i in range(start, start + count)
    ]


def make_publisher(tmp_path: Path, port: int, **mqtt: Any) -> tuple[MqttPublisher, Outbox]:
    device = modbus_device("plc", free_port(), [{"id": "x", "address": "coil:0"}])
    config = load_config(write_config(tmp_path, broker_port=port, devices=[device], mqtt=mqtt))
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = MqttPublisher(
        config.mqtt,
        client_id="gw-test",
        topics=Topics("test", "gw-test"),
        outbox=outbox,
        buffer=LiveBuffer(outbox),
        session=1,
    )
    return publisher, outbox


def test_a_dead_network_thread_is_replaced_and_delivery_goes_on(
    broker, subscriber_factory, tmp_path, caplog, monkeypatch
):
    publisher, outbox = make_publisher(tmp_path, broker.port)
    outbox.append(backlog_rows(20))
    subscriber = subscriber_factory(broker.port, topic="test/gw-test/metrics/#")
    subscriber.wait_for(subscriber.connected, what="the subscriber")
    monkeypatch.setattr(threading, "excepthook", lambda _args: None)  # the planted crash
    with caplog.at_level(logging.INFO, logger="agent.publish.mqtt"):
        publisher.start()
        try:
            subscriber.wait_for(lambda: len(subscriber.samples()) == 20, what="the first 20")
            client = publisher._client
            first_thread = client._thread
            assert first_thread is not None
            original = client._loop

            def crash(timeout: float = 1.0) -> Any:
                client._loop = original  # type: ignore[method-assign]
                raise RuntimeError("planted: paho's network loop crashes")

            client._loop = crash  # type: ignore[method-assign]
            first_thread.join(5)
            assert not first_thread.is_alive(), "paho's network thread died"
            outbox.append(backlog_rows(20, start=20))
            publisher.notify()
            subscriber.wait_for(
                lambda: len({s["v"] for s in subscriber.samples()}) == 40,
                timeout=15,
                what="the next 20 after the thread was replaced",
            )
            subscriber.wait_for(lambda: outbox.stats().rows == 0, what="rows deleted")
        finally:
            publisher.stop(2)
    assert publisher.stats.connects == 2
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(messages) == 1 and "network thread ended without reporting" in messages[0]


def test_a_failing_callback_is_logged_once_and_paho_keeps_running(
    broker, subscriber_factory, tmp_path, caplog
):
    publisher, outbox = make_publisher(tmp_path, broker.port)
    outbox.append(backlog_rows(30))
    subscriber = subscriber_factory(broker.port, topic="test/gw-test/metrics/#")
    subscriber.wait_for(subscriber.connected, what="the subscriber")

    def broken(level: int, text: str) -> None:
        raise ValueError("planted: a bug in a callback")

    publisher.link.note_log = broken  # type: ignore[method-assign]  # every paho log line
    with caplog.at_level(logging.INFO, logger="agent.publish.mqtt"):
        publisher.start()
        try:
            subscriber.wait_for(lambda: len(subscriber.samples()) == 30, what="all 30 records")
            subscriber.wait_for(lambda: outbox.stats().rows == 0, what="rows deleted")
            thread = publisher._client._thread
            assert thread is not None and thread.is_alive()
        finally:
            publisher.stop(2)
    failures = [r for r in caplog.records if "The MQTT callback on_log failed" in r.getMessage()]
    assert len(failures) == 1, "logged once, with its traceback"
    assert failures[0].exc_info is not None
    assert publisher.stats.connects == 1


def test_reconnect_delays_have_full_jitter(tmp_path, caplog):
    backoff = Backoff(1.0, 60.0, rng=random.Random(7))
    assert 1.0 <= backoff.next_delay() <= 2.0, "the first cap is twice the minimum"
    delays = [backoff.next_delay() for _ in range(30)]
    assert all(1.0 <= delay <= 60.0 for delay in delays)
    assert max(delays) > 30, "the cap doubles up to reconnect_max"
    backoff.reset()
    assert 1.0 <= backoff.next_delay() <= 2.0
    # In the publisher: nobody listens on the port; attempts are spaced by jittered delays.
    publisher, _ = make_publisher(tmp_path, free_port(), reconnect_min="200ms", reconnect_max="1s")
    attempts: list[float] = []
    original = publisher._client.reconnect

    def counted() -> Any:
        attempts.append(time.monotonic())
        return original()

    publisher._client.reconnect = counted  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="agent.publish.mqtt"):
        publisher.start()
        time.sleep(5)
        publisher.stop(0.5)
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert len(gaps) >= 4
    assert all(0.19 <= gap <= 1.0 + 0.15 for gap in gaps), gaps
    assert statistics.pstdev(gaps) > 0.05, f"not jittered: {gaps}"
    warnings = [r.getMessage() for r in caplog.records if "Cannot connect" in r.getMessage()]
    assert len(warnings) == 1, "a refused connection is logged once, not on every retry"
    assert "Connection refused" in warnings[0]


@pytest.mark.slow
def test_an_idle_link_is_kept_by_pings_not_torn_down_by_the_watchdog(broker, tmp_path, caplog):
    publisher, _ = make_publisher(tmp_path, broker.port, keepalive="5s")
    with caplog.at_level(logging.INFO, logger="agent.publish.mqtt"):
        publisher.start()
        time.sleep(2 * 5 + 1)  # two keep-alives with nothing to publish: only PINGREQ/PINGRESP
        publisher.stop(1)
    assert publisher.stats.connects == 1
    assert publisher.link.half_open_detected == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
