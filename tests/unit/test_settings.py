"""Durations and the programmatic config API (the CLI's messages are golden-tested)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.settings import (
    Config,
    ModbusTcpDevice,
    parse_duration,
    parse_modbus_address,
    parse_size,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        (2, 2.0),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["fast", "1w", "-1s", "", True])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1024, 1024),
        ("64KiB", 65536),
        ("512 MiB", 512 * 2**20),
        ("2GB", 2 * 10**9),
        ("1.5GiB", 3 * 2**29),
    ],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["big", "1 GiBs", "-1MiB", True, ""])
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(text)


def test_demo_config_loads_with_paths_resolved():
    config = load_config(REPO / "config" / "examples" / "demo.yaml")
    assert config.agent.data_dir.is_absolute()
    assert config.outbox_path == config.agent.data_dir / "outbox.db"
    assert config.client_id == "gw-demo"
    point = config.devices[0].points[4]
    assert (point.table, point.register, point.order) == ("holding", 12, "CDAB")


def test_config_error_carries_every_problem(tmp_path: Path):
    path = tmp_path / "agent.yaml"
    path.write_text("agent: {id: 'bad id'}\nmqtt: {host: x, port: 0}\ndevices: []\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    fields = [problem.field for problem in caught.value.problems]
    assert fields == ["agent.id", "mqtt.port", "devices"]
    assert all(problem.file == str(path) for problem in caught.value.problems)


@pytest.mark.parametrize("exclude_defaults", [False, True])
def test_validated_config_rebuilds_identically_without_validation(exclude_defaults):
    config = load_config(REPO / "config" / "examples" / "demo.yaml")
    dumped = config.model_dump_json(exclude_defaults=exclude_defaults)
    rebuilt = Config.from_validated(json.loads(dumped))
    assert rebuilt == config
    assert isinstance(rebuilt.agent.data_dir, Path)
    assert rebuilt.devices[0].points[0].table == "holding"


def test_every_kind_of_device_rebuilds_identically(tmp_path: Path):
    path = tmp_path / "agent.yaml"
    path.write_text(
        "agent: {id: gw}\nmqtt: {host: h, username: u, password_env: HOME}\n"
        "outbox: {path: /tmp/x.db}\ndevices:\n"
        "  - {name: a, driver: modbus_rtu, serial_port: /dev/ttyUSB0, addressing: modicon,\n"
        "     points: [{id: a.v, address: 30001, type: int32, unavailable: [0]}]}\n"
        "  - {name: b, driver: modbus_rtu_tcp, host: 10.0.0.1, port: 4001, pause: 20ms,\n"
        "     points: [{id: b.s, address: 'holding:0', type: string, length: 8}]}\n"
        "  - {name: c, driver: modbus_tcp, host: 10.0.0.2, profile: eastron-sdm120,\n"
        "     quantities: [voltage]}\n"
    )
    config = load_config(path)
    rebuilt = Config.from_validated(json.loads(config.model_dump_json(exclude_defaults=True)))
    assert rebuilt == config
    assert isinstance(rebuilt.devices[0].serial_port, Path)
    assert rebuilt.devices[0].points[0].protocol_address == "input:0"


def test_yaml_that_only_the_round_trip_parser_accepts_still_loads(tmp_path: Path):
    # libyaml (the fast C parser) refuses a ':' inside a plain scalar in a flow mapping;
    # YAML 1.2 allows it, and `shopfloor demo` writes its config that way.
    path = tmp_path / "agent.yaml"
    path.write_text(
        "agent: {id: gw, data_dir: data}\nmqtt: {host: 127.0.0.1}\n"
        "devices:\n  - name: plc\n    driver: modbus_tcp\n    host: 127.0.0.1\n"
        "    points:\n    - {id: a, address: input:0, type: float32}\n"
    )
    config = load_config(path)
    assert config.devices[0].points[0].address == "input:0"


@pytest.mark.parametrize(
    ("address", "addressing", "expected"),
    [
        ("holding:0", "protocol", ("holding", 0)),
        ("input:65535", "protocol", ("input", 65535)),
        ("holding:1", "one_based", ("holding", 0)),
        ("coil:65536", "one_based", ("coil", 65535)),
        ("40001", "modicon", ("holding", 0)),
        ("30100", "modicon", ("input", 99)),
        ("10001", "modicon", ("discrete", 0)),
        ("00017", "modicon", ("coil", 16)),
        ("400001", "modicon", ("holding", 0)),
        ("465536", "modicon", ("holding", 65535)),
        (40001, "modicon", ("holding", 0)),
    ],
)
def test_every_address_notation_names_the_same_protocol_address(address, addressing, expected):
    assert parse_modbus_address(address, addressing) == expected


@pytest.mark.parametrize(
    ("address", "addressing", "message"),
    [
        ("holding:65536", "protocol", "beyond the Modbus range"),
        ("holding:0", "one_based", "count from 1"),
        ("holding:100", "modicon", "5- or 6-digit reference"),
        ("40000", "modicon", "count from 1"),
        ("20001", "modicon", "5- or 6-digit reference"),
        ("40001", "protocol", "TABLE:ADDRESS"),
        ("register:1", "protocol", "TABLE:ADDRESS"),
    ],
)
def test_address_mistakes_are_explained(address, addressing, message):
    with pytest.raises(ValueError, match=message):
        parse_modbus_address(address, addressing)


def test_points_take_the_device_addressing_unless_they_name_their_own():
    device = ModbusTcpDevice.model_validate(
        {
            "name": "plc",
            "driver": "modbus_tcp",
            "host": "127.0.0.1",
            "addressing": "one_based",
            "points": [
                {"id": "a", "address": "holding:1", "type": "uint16"},
                {"id": "b", "address": "holding:1", "type": "uint16", "addressing": "protocol"},
            ],
        }
    )
    assert [p.protocol_address for p in device.points] == ["holding:0", "holding:1"]


@pytest.mark.parametrize("exclude_defaults", [False, True])
def test_cameras_and_stations_rebuild_identically(tmp_path: Path, exclude_defaults: bool):
    (tmp_path / "frames").mkdir()
    (tmp_path / "model.onnx").write_bytes(b"")  # loading the config only checks it exists
    path = tmp_path / "agent.yaml"
    path.write_text(
        "agent: {id: gw}\nmqtt: {host: h}\ndevices:\n"
        "  - {name: plc, driver: modbus_tcp, host: 10.0.0.2, points: [\n"
        "      {id: t, address: 'coil:0'}, {id: ok, address: 'coil:1'},\n"
        "      {id: n, address: 'holding:0', type: int16}]}\n"
        "cameras:\n"
        "  - {name: c1, folder: frames, fps: 5}\n"
        "  - {name: c2, source: 'rtsp://10.0.0.9/s', latency: 200ms, width: 640}\n"
        "stations:\n"
        "  - name: s\n    camera: c1\n    trigger: {point: t, command: true}\n"
        "    outputs: {ok: ok, counter: n}\n"
        "    rois: [{name: a, x: 1, y: 2, width: 3, height: 4}]\n"
        "    models: [{path: model.onnx, threshold: 0.7, ng_classes: [x], rois: [a]}]\n"
        "    images: {save: all, directory: /srv/img, max_bytes: 2MiB, max_age: 1d}\n"
        "  - {name: t, camera: c2, trigger: {interval: 2s}, models: [{path: model.onnx}]}\n"
    )
    config = load_config(path)
    dumped = config.model_dump_json(exclude_defaults=exclude_defaults)
    rebuilt = Config.from_validated(json.loads(dumped))
    assert rebuilt == config
    assert isinstance(rebuilt.stations[0].models[0].path, Path)
    assert isinstance(rebuilt.stations[0].images.directory, Path)
    assert isinstance(rebuilt.cameras[0].folder, Path)
    assert rebuilt.stations[1].trigger.interval == 2.0


@pytest.mark.parametrize("exclude_defaults", [False, True])
def test_energy_consumers_rebuild_identically(tmp_path: Path, exclude_defaults: bool):
    path = tmp_path / "agent.yaml"
    path.write_text(
        "agent: {id: gw}\nmqtt: {host: h}\ndevices:\n"
        "  - {name: m, driver: modbus_tcp, host: 10.0.0.2, points: [\n"
        "      {id: e, address: 'input:0', type: uint32},\n"
        "      {id: p, address: 'input:2', type: float32},\n"
        "      {id: s, address: 'holding:0', type: uint16},\n"
        "      {id: n, address: 'holding:1', type: uint32}]}\n"
        "energy:\n"
        "  - name: press\n"
        "    energy: {point: e, register: integer, bits: 32, unit_factor: 0.001,"
        " max_power_kw: 150}\n"
        "    state_point: s\n    state_map: {0: off, 1: idle, 2: producing, Run: producing}\n"
        "    parts: n\n    interval: 5m\n    timezone: Europe/Berlin\n"
        "    shifts: [{name: early, start: '06:00', end: '14:00'},"
        " {name: night, start: '22:00', end: '06:00'}]\n"
        "  - name: oven\n    power: {point: p, unit_factor: 0.001, max_gap: 30s}\n"
        "    off_below_kw: 1\n    producing_above_kw: 20\n    hysteresis_kw: 0.5\n"
        "    min_dwell: 10s\n"
        "    baseline: {model: model.onnx, features: {rate: production_rate, temp: p}}\n"
    )
    (tmp_path / "model.onnx").write_bytes(b"")  # loading the config only checks it exists
    config = load_config(path)
    assert config.energy[1].baseline is not None
    assert config.energy[1].baseline.model == tmp_path.resolve() / "model.onnx"
    assert config.energy[0].energy is not None
    assert config.energy[0].energy.kind == "integer"
    dumped = config.model_dump_json(exclude_defaults=exclude_defaults)
    rebuilt = Config.from_validated(json.loads(dumped))
    assert rebuilt == config
    assert rebuilt.energy[0].state_map == {0: "off", 1: "idle", 2: "producing", "Run": "producing"}
    assert rebuilt.energy[1].power is not None
    assert rebuilt.energy[1].power.max_gap == 30.0
