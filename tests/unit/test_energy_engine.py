"""The energy consumer wired in-process: power integration with thresholds, KPI samples on the
meter's device, and imports that stay lazy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.model import Event, Quality, Sample
from agent.settings import EnergySettings
from inference.energy.engine import EnergyConsumer

REPO = Path(__file__).resolve().parents[2]
BASE = 1_700_000_000_000  # a whole second


def test_power_integrated_per_interval_with_states_from_thresholds():
    settings = EnergySettings.model_validate(
        {
            "name": "oven",
            "power": {"point": "m.p", "unit_factor": 0.001},  # W
            "off_below_kw": 1,
            "producing_above_kw": 5,
            "interval": "1s",
        }
    )
    published: list[tuple[str, list[Sample]]] = []
    events: list[Event] = []
    consumer = EnergyConsumer(
        settings,
        device="m",
        publish_metrics=lambda device, samples: published.append((device, samples)),
        publish_event=events.append,
    )
    for k, watts in enumerate([10_000, 10_000, 10_000, 3_000, 3_000]):
        consumer.observe([Sample("m.p", watts, Quality.GOOD, BASE + k * 1000)])
    assert {device for device, _ in published} == {"m"}
    samples = [s for _, batch in published for s in batch]
    kwh = [s for s in samples if s.point == "oven.energy_kwh"]
    assert [s.ts for s in kwh] == [BASE, BASE + 1000, BASE + 2000, BASE + 3000]
    assert all(s.quality is Quality.GOOD for s in kwh)
    ten_kw_second = 20_000 * 1000 / 1000 / 7_200_000  # (p0 + p1) * dt / 2 h
    assert [s.value for s in kwh[:2]] == [ten_kw_second, ten_kw_second]
    producing = {s.ts: s.value for s in samples if s.point == "oven.producing_kwh"}
    idle = {s.ts: s.value for s in samples if s.point == "oven.idle_kwh"}
    assert producing[BASE] == ten_kw_second and idle[BASE] == 0
    # 10 kW -> 3 kW: the state turns idle at the 3 kW reading, the interval before stays
    # producing; the last interval is all idle.
    assert idle[BASE + 3000] == kwh[3].value and producing[BASE + 3000] == 0
    assert not [s for s in samples if s.point == "oven.kwh_per_good_part"]
    assert events == []
    assert consumer.health()["intervals"] == 4


def test_energy_is_imported_only_when_configured(tmp_path: Path):
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from agent.config import load_config\n"
        "from agent.app import Agent\n"
        "agent = Agent(load_config(Path(sys.argv[1])))\n"
        "loaded = {'inference.energy', 'numpy', 'onnxruntime'} & set(sys.modules)\n"
        "agent.outbox.close()\n"
        "print(json.dumps(sorted(loaded)))\n"
    )

    def modules(energy: list[dict[str, Any]] | None, label: str) -> list[str]:
        directory = tmp_path / label
        directory.mkdir()
        document: dict[str, Any] = {
            "agent": {"id": "gw", "data_dir": str(directory)},
            "mqtt": {"host": "127.0.0.1"},
            "devices": [
                {
                    "name": "m",
                    "driver": "modbus_tcp",
                    "host": "127.0.0.1",
                    "points": [{"id": "m.e", "address": "holding:0", "type": "uint32"}],
                }
            ],
        }
        if energy:
            document["energy"] = energy
        path = directory / "agent.yaml"
        path.write_text(json.dumps(document))
        result = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
        return loaded

    meter = {"point": "m.e", "unit_factor": 0.001, "max_power_kw": 50}
    assert modules(None, "none") == []
    assert modules([{"name": "x", "energy": meter}], "energy") == ["inference.energy"]
    baseline = {
        "model": str(REPO / "inference" / "models" / "energy_baseline.onnx"),
        "features": {
            "production_rate": "production_rate",
            "idle_share": "idle_share",
            "producing_share": "producing_share",
            "ambient_temperature": "m.e",
        },
    }
    assert modules([{"name": "x", "energy": meter, "baseline": baseline}], "baseline") == [
        "inference.energy",
        "numpy",
        "onnxruntime",
    ]


def test_baseline_expectation_residual_and_one_anomaly_raised():
    settings = EnergySettings.model_validate(
        {
            "name": "press",
            "power": {"point": "m.p"},  # kW
            "state_point": "m.s",
            "state_map": {0: "off", 1: "idle", 2: "producing"},
            "interval": "1s",
            "baseline": {
                "model": str(REPO / "inference" / "models" / "energy_baseline.onnx"),
                "features": {
                    "production_rate": "production_rate",
                    "idle_share": "idle_share",
                    "producing_share": "producing_share",
                    "ambient_temperature": "m.t",
                },
            },
        }
    )
    published: list[Sample] = []
    events: list[Event] = []
    consumer = EnergyConsumer(
        settings,
        device="m",
        publish_metrics=lambda device, samples: published.extend(samples),
        publish_event=events.append,
        scales={"m.t": (0.1, 0.0)},  # the register holds 0.1 degC
    )
    power = [4.0] * 10 + [10.0] * 10  # off all along; 6 kW of extra load from the 11th second
    for k, kw in enumerate(power):
        ts = BASE + k * 1000
        consumer.observe(
            [
                Sample("m.s", 0, Quality.GOOD, ts),
                Sample("m.t", 200, Quality.GOOD, ts),
                Sample("m.p", kw, Quality.GOOD, ts),
            ]
        )
    expected = [s for s in published if s.point == "press.expected_kw"]
    residual = [s for s in published if s.point == "press.residual_kw"]
    assert len(expected) == len(residual) == len(power) - 1
    assert all(s.quality is Quality.GOOD for s in expected)
    assert all(abs(s.value - 4.0) < 1.0 for s in expected)  # type: ignore[operator]
    # Before the extra load no residual is large and nothing is raised.
    assert all(abs(s.value) < 1.0 for s in residual[:9])  # type: ignore[arg-type]
    raised = [e for e in events if e.kind == "energy_anomaly"]
    assert len(raised) == 1
    assert raised[0].data["state"] == "raised"
    assert raised[0].ts <= BASE + 14_000  # within a few intervals of the fault
    assert consumer.health()["anomalies_raised"] == 1
