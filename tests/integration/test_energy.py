"""An energy consumer end to end: a simulated meter (a uint32 Wh counter register) and a
simulated PLC (machine state and a parts counter) are polled by the agent (a real process),
which publishes per-interval kWh, kWh per good part and state shares on the meter's device,
and a counter reset as one `energy_counter` event, through a real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import modbus_device, write_config

ENERGY_REGISTER = 0  # meter, holding, uint32 Wh
STATE_REGISTER = 0  # PLC, holding, uint16: 0 off, 1 idle, 2 producing
PARTS_REGISTER = 1  # PLC, holding, uint32


def energy_config(tmp_path: Path, broker_port: int, meter_port: int, plc_port: int) -> Path:
    meter = modbus_device(
        "meter",
        meter_port,
        [{"id": "meter.energy", "address": f"holding:{ENERGY_REGISTER}", "type": "uint32"}],
    )
    plc = modbus_device(
        "press",
        plc_port,
        [
            {"id": "press.state", "address": f"holding:{STATE_REGISTER}", "type": "uint16"},
            {"id": "press.parts", "address": f"holding:{PARTS_REGISTER}", "type": "uint32"},
        ],
    )
    config = write_config(tmp_path, broker_port=broker_port, devices=[meter, plc])
    document = json.loads(config.read_text())
    document["energy"] = [
        {
            "name": "press1",
            "energy": {
                "point": "meter.energy",
                "register": "integer",
                "bits": 32,
                "unit_factor": 0.001,
                # Steps of kWh within 100 ms must stay plausible.
                "max_power_kw": 1_000_000,
            },
            "state_point": "press.state",
            "state_map": {0: "off", 1: "idle", 2: "producing"},
            "parts": "press.parts",
            "interval": "2s",
        }
    ]
    config.write_text(json.dumps(document, indent=2))
    return config


def early_in_an_interval() -> None:
    """Wait until 0.3 s into a 2 s interval (they are aligned to the clock): a change made now
    is read by both devices' 100 ms polls well inside it (1.6 s to spare on a loaded machine),
    so its energy and parts are not split between intervals."""
    while not 0.3 <= time.time() % 2 < 0.4:
        time.sleep(0.005)


def events(subscriber: Any, kind: str) -> list[dict[str, Any]]:
    return [
        event
        for message in subscriber.snapshot()
        if message.topic.endswith(f"/events/{kind}")
        for event in message.payload["events"]
    ]


def test_kwh_and_kwh_per_part_exact_and_a_reset_is_one_event(
    broker, modbus, simulator_factory, subscriber_factory, agent_factory, tmp_path
):
    plc = simulator_factory()
    modbus.set_value("holding", ENERGY_REGISTER, 1_000_000, "uint32")  # 1000 kWh
    plc.set_value("holding", STATE_REGISTER, 2, "uint16")
    plc.set_value("holding", PARTS_REGISTER, 100, "uint32")
    config = energy_config(tmp_path, broker.port, modbus.port, plc.port)
    subscriber = subscriber_factory(broker.port)
    agent = agent_factory(config)
    agent.start()

    def kwh() -> list[dict[str, Any]]:
        return subscriber.samples_of("press1.energy_kwh")

    subscriber.wait_for(lambda: len(kwh()) >= 2, 20, "two closed intervals")
    topics = {m.topic for m in subscriber.metrics() if "press1.energy_kwh" in json.dumps(m.payload)}
    assert topics == {"test/gw-test/metrics/meter"}
    assert kwh()[0]["q"] == "uncertain"  # the first interval is not covered whole
    assert all(s["v"] == 0 for s in kwh())

    # 1.5 kWh and 3 parts in one interval: 0.5 kWh per part, all while producing.
    early_in_an_interval()
    modbus.set_value("holding", ENERGY_REGISTER, 1_001_500, "uint32")
    plc.set_value("holding", PARTS_REGISTER, 103, "uint32")
    subscriber.wait_for(lambda: any(s["v"] == 1.5 for s in kwh()), 10, "the 1.5 kWh interval")
    (interval,) = [s for s in kwh() if s["v"] == 1.5]
    assert interval["q"] == "good"
    same = {s["p"]: s for s in subscriber.samples() if s["ts"] == interval["ts"]}
    assert same["press1.kwh_per_good_part"]["v"] == 0.5
    assert same["press1.producing_kwh"]["v"] == 1.5
    assert same["press1.idle_kwh"]["v"] == 0
    assert same["press1.off_kwh"]["v"] == 0
    # No other interval has energy or parts.
    assert [s["v"] for s in kwh() if s["v"]] == [1.5]
    assert len(subscriber.samples_of("press1.kwh_per_good_part")) == 1

    # The meter resets and counts 200 Wh after it: 0.2 kWh, one event, nothing negative.
    early_in_an_interval()
    modbus.set_value("holding", ENERGY_REGISTER, 200, "uint32")
    subscriber.wait_for(lambda: any(s["v"] == 0.2 for s in kwh()), 10, "the 0.2 kWh interval")
    subscriber.wait_for(lambda: events(subscriber, "energy_counter"), 5, "the counter event")
    time.sleep(3)  # more intervals, to see that nothing else follows
    (event,) = events(subscriber, "energy_counter")
    assert event["source"] == "press1"
    assert event["data"]["event"] == "reset"
    assert event["data"]["delta_kwh"] == 0.2
    assert all(s["v"] >= 0 for s in kwh())
    assert [s["v"] for s in kwh() if s["v"]] == [1.5, 0.2]

    def energy_health() -> dict[str, Any] | None:
        reports = [m.payload for m in subscriber.snapshot() if m.topic.endswith("/health")]
        return reports[-1].get("energy") if reports else None

    subscriber.wait_for(
        lambda: (energy_health() or {}).get("press1", {}).get("counter_events") == 1,
        5,
        "the energy health",
    )
    health = energy_health()
    assert health is not None
    assert health["press1"]["meter_readings"]["reset"] == 1
    assert agent.stop() == 0
