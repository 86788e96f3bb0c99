"""Malformed, oversized and hostile configuration files: every one is refused with problems
that name the file, never with a traceback, a hang or an exception of another kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, load_config
from tests.conftest import REPO

VALID = {
    "agent": {"id": "gw-fuzz", "data_dir": "data"},
    "mqtt": {"host": "127.0.0.1"},
    "devices": [
        {
            "name": "plc",
            "driver": "modbus_tcp",
            "host": "127.0.0.1",
            "points": [{"id": "a", "address": "holding:0", "type": "uint16"}],
        },
        {
            "name": "filler",
            "driver": "opcua",
            "endpoint": "opc.tcp://127.0.0.1:4840",
            "points": [{"id": "b", "node": "ns=2;s=Speed"}],
        },
    ],
}

ALIAS_BOMB = "agent: {id: gw}\nmqtt: {host: localhost}\nx1: &a1 [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"x{i}: &a{i} [{','.join([f'*a{i - 1}'] * 10)}]\n" for i in range(2, 10)
)

HOSTILE: dict[str, bytes] = {
    "empty": b"",
    "only a comment": b"# nothing here\n",
    "binary garbage": bytes(range(256)) * 4,
    "NUL bytes": b"agent:\n  id: gw\0\n",
    "not UTF-8": b"agent:\n  id: \xff\xfe\n",
    "a list": b"- agent\n- mqtt\n",
    "a scalar": b"42\n",
    "tabs for indentation": b"agent:\n\tid: gw\n",
    "unclosed quote": b'agent: {id: "gw}\n',
    "duplicate keys": b"agent: {id: a}\nagent: {id: b}\n",
    "alias bomb": ALIAS_BOMB.encode(),
    "nested 10,000 deep": b"a: " + b"[" * 10_000 + b"]" * 10_000 + b"\n",
    "a 5 MB string": b"agent: {id: '" + b"x" * 5_000_000 + b"'}\nmqtt: {host: h}\ndevices: []\n",
    "a huge integer": b"agent: {id: gw}\nmqtt: {host: h, port: " + b"9" * 5000 + b"}\n",
    "nan and inf": b"agent: {id: gw}\nmqtt: {host: h, keepalive: .nan}\ndevices: .inf\n",
    "devices a mapping": b"agent: {id: gw}\nmqtt: {host: h}\ndevices: {plc: 1}\n",
    "points a string": (
        b"agent: {id: gw}\nmqtt: {host: h}\ndevices:\n"
        b"  - {name: p, driver: modbus_tcp, host: h, points: lots}\n"
    ),
    "5,000 wrong points": (
        "agent: {id: gw}\nmqtt: {host: h}\ndevices:\n  - name: p\n    driver: modbus_tcp\n"
        "    host: h\n    points:\n"
        + "".join(
            f"      - {{id: p{i}, address: 'holding:{i}', type: bogus}}\n" for i in range(5_000)
        )
    ).encode(),
    "a 64 KiB device name": (
        "agent: {id: gw}\nmqtt: {host: h}\ndevices:\n"
        f"  - {{name: {'n' * 65536}, driver: modbus_tcp, host: h, points: []}}\n"
    ).encode(),
    "unknown YAML tag": b"agent: !!python/object:os.system {id: gw}\n",
    "merge key from nowhere": b"agent:\n  <<: *missing\n",
    "control characters in ids": (b'agent: {id: "gw\\x1b[2J"}\nmqtt: {host: h}\ndevices: []\n'),
    "a profile path outside": (
        b"agent: {id: gw}\nmqtt: {host: h}\ndevices:\n"
        b"  - {name: m, driver: modbus_tcp, host: h, profile: ../../../../etc/passwd}\n"
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_config_is_refused_with_located_problems(name: str, tmp_path: Path):
    path = tmp_path / "agent.yaml"
    path.write_bytes(HOSTILE[name])
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.problems
    # Each problem names a file (this one, or the profile it asked for) and a line.
    assert all(problem.file and problem.line >= 1 for problem in refused.value.problems)


@pytest.mark.parametrize("name", ["binary garbage", "alias bomb", "nested 10,000 deep"])
def test_the_check_command_exits_2_without_a_traceback(name: str, tmp_path: Path):
    path = tmp_path / "agent.yaml"
    path.write_bytes(HOSTILE[name])
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and f"{path}:" in result.stderr


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += _paths(value, (*prefix, index))
    return found


_PATHS = [path for path in _paths(VALID) if path]
_JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(where=st.sampled_from(_PATHS), junk=_JUNK)
def test_any_value_anywhere_is_validated_or_refused(
    where: tuple[Any, ...], junk: Any, tmp_path: Path
):
    document = json.loads(json.dumps(VALID))
    parent = document
    for step in where[:-1]:
        parent = parent[step]
    parent[where[-1]] = junk
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps(document, allow_nan=True))
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems
