"""Values written into a real Modbus server arrive at a real broker exactly, and as configured."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from drivers.simulate.broker import free_port
from tests.conftest import REPO, modbus_device, write_config


def shopfloor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line as a user would, and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


def float32(value: float) -> float:
    """The float a float32 register pair really holds."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


TYPED_POINTS = [
    # (id, address, type, order, raw value written, value expected at the broker)
    ("t.int16", "holding:0", "int16", "ABCD", -1234, -1234),
    ("t.uint16", "holding:1", "uint16", "ABCD", 54321, 54321),
    ("t.int32", "holding:2", "int32", "ABCD", -123456789, -123456789),
    ("t.int32_cdab", "holding:4", "int32", "CDAB", -123456789, -123456789),
    ("t.uint32", "holding:6", "uint32", "ABCD", 0xF1020304, 0xF1020304),
    ("t.uint32_cdab", "holding:8", "uint32", "CDAB", 0x01020304, 0x01020304),
    ("t.float32", "holding:10", "float32", "ABCD", 3.14159, float32(3.14159)),
    ("t.float32_cdab", "holding:12", "float32", "CDAB", -2.5e-3, float32(-2.5e-3)),
    ("t.input_float", "input:20", "float32", "ABCD", 1234.5, 1234.5),
    ("t.int16_badc", "holding:30", "int16", "BADC", -2, -2),
]


def test_typed_values_arrive_exactly(broker, modbus, subscriber_factory, agent_factory, tmp_path):
    for _id, address, value_type, order, raw, _expected in TYPED_POINTS:
        table, register = address.split(":")
        modbus.set_value(table, int(register), raw, value_type, order=order)
    modbus.set_value("holding", 40, 215, "uint16")
    modbus.set_value("coil", 3, True, "bool")
    points = [
        {"id": point_id, "address": address, "type": value_type, "order": order}
        for point_id, address, value_type, order, _raw, _expected in TYPED_POINTS
    ]
    points.append({"id": "t.scaled", "address": "holding:40", "type": "uint16", "scale": 0.1})
    points.append({"id": "t.coil", "address": "coil:3"})
    config = write_config(
        tmp_path, broker_port=broker.port, devices=[modbus_device("plc", modbus.port, points)]
    )
    subscriber = subscriber_factory(broker.port)
    agent = agent_factory(config)
    before_start_ms = time.time() * 1000
    agent.start()
    subscriber.wait_for(
        lambda: {s["p"] for s in subscriber.samples()} >= {p["id"] for p in points},
        what="a sample of every point",
    )
    latest = {s["p"]: s for s in subscriber.samples()}
    for point_id, _address, _type, _order, _raw, expected in TYPED_POINTS:
        sample = latest[point_id]
        assert sample["v"] == expected, point_id
        assert type(sample["v"]) is type(expected), point_id
        assert sample["q"] == "good"
    assert latest["t.scaled"]["v"] == 21.5
    assert latest["t.coil"]["v"] is True
    # The timestamp is the read time: after start, before arrival, within the poll window.
    messages = subscriber.metrics()
    for message in messages:
        for sample in message.payload["samples"]:
            assert before_start_ms <= sample["ts"] <= message.arrived * 1000 + 1
            assert message.arrived * 1000 - sample["ts"] < 1000
    # One request per contiguous block, not one per point: ~3 requests per poll here.
    first = messages[0].payload
    assert first["agent"] == "gw-test"
    assert first["seq"] >= 1
    assert isinstance(first["session"], int)
    assert agent.stop() == 0


def test_changed_value_is_published(broker, modbus, subscriber_factory, agent_factory, tmp_path):
    modbus.set_value("holding", 0, 1.0, "float32")
    config = write_config(
        tmp_path,
        broker_port=broker.port,
        devices=[
            modbus_device(
                "plc", modbus.port, [{"id": "v", "address": "holding:0", "type": "float32"}]
            )
        ],
    )
    subscriber = subscriber_factory(broker.port)
    agent_factory(config).start()
    subscriber.wait_for(lambda: subscriber.samples_of("v"), what="first sample")
    modbus.set_value("holding", 0, 2.0, "float32")
    subscriber.wait_for(
        lambda: any(s["v"] == 2.0 for s in subscriber.samples_of("v")), what="the new value"
    )


def test_deadband_and_heartbeat(broker, modbus, subscriber_factory, agent_factory, tmp_path):
    modbus.set_value("holding", 0, 10.0, "float32")
    modbus.set_value("holding", 2, 100.0, "float32")
    points = [
        {
            "id": "abs",
            "address": "holding:0",
            "type": "float32",
            "deadband": 1.0,
            "heartbeat": "1s",
        },
        {"id": "pct", "address": "holding:2", "type": "float32", "deadband_percent": 5},
    ]
    config = write_config(
        tmp_path, broker_port=broker.port, devices=[modbus_device("plc", modbus.port, points)]
    )
    subscriber = subscriber_factory(broker.port)
    agent_factory(config).start()
    subscriber.wait_for(lambda: subscriber.samples_of("pct"), what="first samples")
    # Within the deadbands: nothing new except heartbeats of `abs`.
    modbus.set_value("holding", 0, 10.5, "float32")
    modbus.set_value("holding", 2, 104.0, "float32")
    time.sleep(3.5)
    abs_values = [s["v"] for s in subscriber.samples_of("abs")]
    pct_values = [s["v"] for s in subscriber.samples_of("pct")]
    assert pct_values == [100.0], "a 4% change must stay within a 5% deadband"
    # First sample plus one heartbeat per second for 3.5 s, polled at 10 Hz (not 35 samples).
    assert 3 <= len(abs_values) <= 5, abs_values
    assert set(abs_values) <= {10.0, 10.5}
    # Heartbeats repeat the current value even though it stayed inside the deadband.
    assert abs_values[-1] == 10.5
    # Beyond the deadbands: published at once.
    modbus.set_value("holding", 0, 12.0, "float32")
    modbus.set_value("holding", 2, 110.0, "float32")
    subscriber.wait_for(
        lambda: (
            subscriber.samples_of("abs")[-1]["v"] == 12.0
            and subscriber.samples_of("pct")[-1]["v"] == 110.0
        ),
        timeout=3,
        what="changes beyond the deadband",
    )


def test_status_and_health(broker, modbus, subscriber_factory, agent_factory, tmp_path):
    config = write_config(
        tmp_path,
        broker_port=broker.port,
        devices=[
            modbus_device(
                "plc", modbus.port, [{"id": "v", "address": "holding:0", "type": "int16"}]
            )
        ],
    )
    subscriber = subscriber_factory(broker.port)
    agent = agent_factory(config)
    agent.start()

    def healths():
        return [m.payload for m in subscriber.snapshot() if m.topic == "test/gw-test/health"]

    subscriber.wait_for(
        lambda: any(h["devices"]["plc"]["state"] == "connected" for h in healths()),
        what="a health report showing the device connected",
    )
    status = subscriber.statuses()[0]
    assert status["state"] == "online"
    health = healths()[-1]
    assert set(health["outbox"]) == {
        "rows",
        "records",
        "oldest_age_s",
        "in_memory_rows",
        "bytes",
        "cap_bytes",
        "free_disk_bytes",
        "dropping",
        "dropped",
        "drop_episodes",
        "dead_letters",
    }
    assert health["outbox"]["dropped"] == {"metrics": 0, "events": 0, "dead_letters": 0}
    assert 0 < health["outbox"]["bytes"] <= health["outbox"]["cap_bytes"] == 2**30
    assert {"messages_sent", "messages_failed", "connected"} <= set(health["mqtt"])
    assert 0 < health["process"]["rss_mib"] < 200
    assert agent.stop() == 0
    subscriber.wait_for(
        lambda: subscriber.statuses()[-1]["state"] == "offline", what="offline status"
    )
    assert subscriber.statuses()[-1]["reason"] == "shutdown"


def test_read_command_prints_value_and_raw_registers(modbus, tmp_path: Path):
    modbus.set_value("holding", 10, 0x01020304, "uint32", order="CDAB")
    config = write_config(
        tmp_path,
        broker_port=1883,
        devices=[
            modbus_device(
                "plc",
                modbus.port,
                [
                    {
                        "id": "line.counter",
                        "address": "holding:10",
                        "type": "uint32",
                        "order": "CDAB",
                    }
                ],
            )
        ],
    )
    result = shopfloor("read", str(config), "line.counter", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert str(0x01020304) in result.stdout
    assert "0304 0102" in result.stdout  # low word first on the wire
    assert "good" in result.stdout


def test_read_command_unknown_point(modbus, tmp_path: Path):
    config = write_config(
        tmp_path,
        broker_port=1883,
        devices=[
            modbus_device(
                "plc",
                modbus.port,
                [{"id": "line.counter", "address": "holding:1", "type": "int16"}],
            )
        ],
    )
    result = shopfloor("read", str(config), "line.countr")
    assert result.returncode == 2
    assert "did you mean line.counter" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_refuses_a_bad_config_with_every_problem_and_no_traceback(tmp_path: Path):
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent: {id: gw}\nmqtt: {host: 127.0.0.1, port: 70000}\n"
        "devices:\n  - {name: plc, driver: modbus_tcp, host: 127.0.0.1, points: []}\n"
    )
    result = shopfloor("run", str(config))
    assert result.returncode == 2
    assert f"{config}:2:31: mqtt.port: " in result.stderr
    assert f"{config}:4:54: devices[0].points: needs at least 1 entry" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists(), "nothing is started on a bad config"


def test_modbus_exception_gives_bad_for_that_request_only(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    modbus.set_value("holding", 0, 5, "uint16")
    points = [
        {"id": "fine", "address": "holding:0", "type": "uint16"},
        # The simulated device has 2,000 registers: reading at 5,000 is an illegal address.
        {"id": "missing", "address": "holding:5000", "type": "uint16"},
    ]
    config = write_config(
        tmp_path, broker_port=broker.port, devices=[modbus_device("plc", modbus.port, points)]
    )
    subscriber = subscriber_factory(broker.port)
    agent_factory(config).start()
    subscriber.wait_for(
        lambda: subscriber.samples_of("fine") and subscriber.samples_of("missing"),
        what="both points",
    )
    missing = subscriber.samples_of("missing")[-1]
    assert missing["q"] == "bad"
    assert missing["v"] is None
    assert missing["r"] == "exception 2 (illegal data address)"
    assert all(s["q"] == "good" and s["v"] == 5 for s in subscriber.samples_of("fine"))


def test_device_that_never_answers_gives_timeouts_then_reconnects(
    broker, subscriber_factory, agent_factory, tmp_path
):
    """A TCP peer that accepts but never answers (a hung PLC or a half-open link)."""
    silent = socket.create_server(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept_forever():
        with contextlib.suppress(OSError):
            while True:
                accepted.append(silent.accept()[0])

    threading.Thread(target=accept_forever, daemon=True).start()
    try:
        config = write_config(
            tmp_path,
            broker_port=broker.port,
            devices=[
                modbus_device(
                    "hung",
                    port,
                    [{"id": "h", "address": "holding:0", "type": "int16"}],
                    timeout="200ms",
                )
            ],
        )
        subscriber = subscriber_factory(broker.port)
        agent = agent_factory(config)
        agent.start()
        subscriber.wait_for(lambda: len(subscriber.samples_of("h")) >= 3, what="timeouts")
        silence = f"no answer from 127.0.0.1:{port} unit 1"
        assert all(s["q"] == "bad" and s["r"] == silence for s in subscriber.samples_of("h"))
        # The connection is treated as dead (nothing answers on it) and opened again.
        subscriber.wait_for(lambda: len(accepted) >= 2, what="a new connection")
        assert f"is unreachable: {silence}" in agent.log()
    finally:
        silent.close()
        for connection in accepted:
            connection.close()


def test_run_with_a_damaged_outbox_says_what_to_do_and_exits_1(tmp_path: Path):
    config = write_config(
        tmp_path,
        broker_port=free_port(),
        devices=[modbus_device("plc", free_port(), [{"id": "x", "address": "coil:0"}])],
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "outbox.db").write_bytes(
        b"this is not a database, it was an SD card" * 100
    )
    result = shopfloor("run", str(config))
    assert result.returncode == 1
    assert f"cannot open the outbox {tmp_path / 'data' / 'outbox.db'}" in result.stderr
    assert "move it aside" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_an_unreadable_password_file_exits_1(tmp_path: Path):
    password = tmp_path / "mqtt.password"
    password.write_bytes(b"\xff\xfe not utf-8")
    config = write_config(
        tmp_path,
        broker_port=free_port(),
        devices=[modbus_device("plc", free_port(), [{"id": "x", "address": "coil:0"}])],
        mqtt={"username": "gw", "password_file": str(password)},
    )
    result = shopfloor("run", str(config))
    assert result.returncode == 1
    assert "cannot read the MQTT password file" in result.stderr
    assert "Traceback" not in result.stderr
