"""Durations and the programmatic config API (the CLI's messages are golden-tested)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.settings import Config, parse_duration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("1s", 1.0), ("1.5s", 1.5), ("5m", 300.0), ("1h", 3600.0), (2, 2.0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["fast", "1d", "-1s", "", True])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


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


def test_validated_config_rebuilds_identically_without_validation():
    config = load_config(REPO / "config" / "examples" / "demo.yaml")
    rebuilt = Config.from_validated(json.loads(config.model_dump_json()))
    assert rebuilt == config
    assert isinstance(rebuilt.agent.data_dir, Path)
    assert rebuilt.devices[0].points[0].table == "holding"


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
