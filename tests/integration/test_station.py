"""A vision station end to end: a real Modbus PLC raises the trigger, the agent (a real process)
takes a frame, runs a real ONNX model, writes the verdict back into the PLC's registers, and
publishes the result; NG images land on disk."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from drivers.simulate.broker import free_port
from tests.conftest import modbus_device, write_config

COILS = {"trigger": 0, "ack": 1, "ready": 2, "result_ready": 3, "ok": 4, "ng": 5, "error": 6}
REGISTERS = {"class_id": 0, "error_code": 1, "counter": 2, "heartbeat": 3, "part_id": 10}


def brightness_classifier(path: Path, *, slow_matmuls: int = 0) -> Path:
    """A 'classifier' whose verdict is known: mean brightness above one half is class 1
    ('bright', NG). With `slow_matmuls`, it also multiplies 384x384 matrices that depend on
    the input (so they cannot be folded away), to be slow on purpose."""
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Sub", ["mean", "half"], ["above"]),
        helper.make_node("Mul", ["above", "gain"], ["bright_logit"]),
        helper.make_node("Neg", ["bright_logit"], ["dark_logit"]),
    ]
    initializers = [
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [20.0]),
        helper.make_tensor("shape", TensorProto.INT64, [2], [384, 384]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
    ]
    bright = "bright_logit"
    if slow_matmuls:
        weights = np.random.default_rng(1).random((384, 384), dtype=np.float32) / 384
        initializers.append(helper.make_tensor("w", TensorProto.FLOAT, [384, 384], weights))
        nodes.append(helper.make_node("Expand", ["mean", "shape"], ["m0"]))
        for index in range(slow_matmuls):
            nodes.append(helper.make_node("MatMul", [f"m{index}", "w"], [f"m{index + 1}"]))
        nodes += [
            helper.make_node("ReduceMax", [f"m{slow_matmuls}"], ["big"], keepdims=0),
            helper.make_node("Mul", ["big", "zero"], ["nothing"]),
            helper.make_node("Add", ["bright_logit", "nothing"], ["bright_slow"]),
        ]
        bright = "bright_slow"
    nodes += [
        helper.make_node("Unsqueeze", ["dark_logit", "axes"], ["dark_1"]),
        helper.make_node("Unsqueeze", [bright, "axes"], ["bright_1"]),
        helper.make_node("Concat", ["dark_1", "bright_1"], ["logits_1"], axis=0),
        helper.make_node("Unsqueeze", ["logits_1", "axes"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {
        "name": "brightness",
        "version": "1.2.3",
        "task": "classify",
        "names": "{0: 'dark', 1: 'bright'}",
        "imgsz": "[32, 32]",
        "color": "RGB",
        "scale": str(1 / 255),
        "mean": "[0, 0, 0]",
        "std": "[1, 1, 1]",
        "output": "logits",
        "ng_classes": "['bright']",
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def frames_folder(directory: Path, levels: list[int]) -> Path:
    """One 64x48 frame per inspection, of the given grey levels, in name order."""
    directory.mkdir()
    for index, level in enumerate(levels):
        frame = np.full((48, 64, 3), level, dtype=np.uint8)
        cv2.imwrite(str(directory / f"{index:03d}.png"), frame)
    return directory


def sorter_points(**extra: Any) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = [
        {"id": f"sorter.{name}", "address": f"coil:{address}"} for name, address in COILS.items()
    ]
    points += [
        {"id": "sorter.class_id", "address": "holding:0", "type": "int16"},
        {"id": "sorter.error_code", "address": "holding:1", "type": "int16"},
        {"id": "sorter.counter", "address": "holding:2", "type": "uint16"},
        {"id": "sorter.heartbeat", "address": "holding:3", "type": "uint16"},
        {"id": "sorter.part_id", "address": "holding:10", "type": "uint32"},
    ]
    return points


def station_config(
    tmp_path: Path,
    broker_port: int,
    plc_port: int,
    *,
    camera: dict[str, Any],
    model: Path,
    interval: str = "20ms",
    write_functions: str = "single",
    **station: Any,
) -> Path:
    device = modbus_device(
        "sorter", plc_port, sorter_points(), interval=interval, write_functions=write_functions
    )
    config = write_config(tmp_path, broker_port=broker_port, devices=[device])

    document = json.loads(config.read_text())
    document["cameras"] = [{"name": "cam", **camera}]
    document["stations"] = [
        {
            "name": "check",
            "camera": "cam",
            "trigger": {"point": "sorter.trigger"},
            "part_id": "sorter.part_id",
            "ack": "sorter.ack",
            "outputs": {
                name: f"sorter.{name}"
                for name in (
                    "ready",
                    "result_ready",
                    "ok",
                    "ng",
                    "class_id",
                    "error",
                    "error_code",
                    "counter",
                    "heartbeat",
                )
            },
            "heartbeat_interval": "200ms",
            "frame_timeout": "500ms",
            "models": [{"path": str(model)}],
            **station,
        }
    ]
    config.write_text(json.dumps(document, indent=2))
    return config


def start(config: Path, broker: Any, subscriber_factory: Any, agent_factory: Any) -> Any:
    """A subscriber to everything, then the agent with `config`, started."""
    subscriber = subscriber_factory(broker.port)
    agent = agent_factory(config)
    agent.start()
    return subscriber, agent


def coil(plc: Any, name: str) -> bool:
    return bool(plc.get_registers("coil", COILS[name], 1)[0])


def register(plc: Any, name: str, signed: bool = False) -> int:
    value = int(plc.get_registers("holding", REGISTERS[name], 1)[0])
    return value - 65536 if signed and value >= 32768 else value


def wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def inspect_part(plc: Any, part_id: int, timeout: float = 10.0) -> float:
    """Raise the trigger for one part as a PLC does and wait for the counter to change;
    returns the seconds from trigger to result."""
    plc.set_registers("holding", REGISTERS["part_id"], [part_id >> 16, part_id & 0xFFFF])
    time.sleep(0.1)  # the part id is read at least once before the trigger rises
    counter = register(plc, "counter")
    plc.set_registers("coil", COILS["trigger"], [True])
    started = time.monotonic()
    wait(lambda: register(plc, "counter") != counter, timeout, f"a result for part {part_id}")
    elapsed = time.monotonic() - started
    plc.set_registers("coil", COILS["trigger"], [False])
    time.sleep(0.1)
    return elapsed


def inspection_events(subscriber: Any) -> list[dict[str, Any]]:
    return [
        event
        for message in subscriber.snapshot()
        if message.topic.endswith("/events/inspection")
        for event in message.payload["events"]
    ]


def latest_health(subscriber: Any) -> dict[str, Any]:
    healths = [m.payload for m in subscriber.snapshot() if m.topic.endswith("/health")]
    return healths[-1] if healths else {}


def test_trigger_to_verdict_in_plc_event_and_ng_image(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    model = brightness_classifier(tmp_path / "brightness.onnx")
    folder = frames_folder(tmp_path / "frames", [40, 220, 60])  # OK, NG, OK
    config = station_config(
        tmp_path,
        broker.port,
        modbus.port,
        camera={"folder": str(folder)},
        model=model,
        images={"save": "ng", "max_bytes": "1MiB"},
        # Adjacent coils then go in one FC 15 request, adjacent registers in one FC 16.
        write_functions="multiple",
    )
    subscriber, agent = start(config, broker, subscriber_factory, agent_factory)
    # The station tells the PLC it is alive and ready before any part comes.
    wait(lambda: register(modbus, "heartbeat") >= 2, 20, "the station's heartbeat")
    wait(lambda: coil(modbus, "ready"), 5, "ready")

    expected = [(101, "ok", 0), (102, "ng", 1), (103, "ok", 0)]
    for index, (part_id, verdict, class_id) in enumerate(expected, start=1):
        inspect_part(modbus, part_id)
        assert register(modbus, "counter") == index
        assert coil(modbus, "ok") is (verdict == "ok")
        assert coil(modbus, "ng") is (verdict == "ng")
        assert register(modbus, "class_id", signed=True) == class_id
        assert coil(modbus, "error") is False
        assert register(modbus, "error_code") == 0
        # result_ready stays up until the PLC acknowledges.
        assert coil(modbus, "result_ready") is True
        modbus.set_registers("coil", COILS["ack"], [True])
        wait(lambda: not coil(modbus, "result_ready"), 5, "result_ready cleared by the ack")
        modbus.set_registers("coil", COILS["ack"], [False])
        assert coil(modbus, "ready") is True

    subscriber.wait_for(lambda: len(inspection_events(subscriber)) == 3, 10, "3 result events")
    events = inspection_events(subscriber)
    assert [e["data"]["part_id"] for e in events] == [101, 102, 103]
    assert [e["data"]["verdict"] for e in events] == ["ok", "ng", "ok"]
    ng = events[1]
    assert ng["source"] == "check"
    assert ng["data"]["class"] == "bright"
    assert ng["data"]["class_id"] == 1
    assert ng["data"]["counter"] == 2
    assert ng["data"]["plc_written"] is True
    [model_result] = ng["data"]["models"]
    assert model_result["name"] == "brightness"
    assert model_result["version"] == "1.2.3"
    assert model_result["family"] == "classifier"
    assert model_result["verdict"] == "ng"
    assert model_result["score"] > 0.99
    assert set(ng["data"]["timings_ms"]) >= {"frame", "preprocess", "inference", "total"}

    # The NG image (and only it) is on disk, named after its part.
    day = datetime.datetime.fromtimestamp(ng["ts"] / 1000, datetime.UTC).strftime("%Y-%m-%d")
    wait(lambda: list((tmp_path / "data" / "images").rglob("*.jpg")), 5, "the NG image")
    images = list((tmp_path / "data" / "images").rglob("*.jpg"))
    assert len(images) == 1, images
    assert "_102_ng" in images[0].name
    assert images[0].parent.name == day

    subscriber.wait_for(
        lambda: (
            latest_health(subscriber).get("stations", {}).get("check", {}).get("inspections") == 3
        ),
        10,
        "health counting 3 inspections",
    )
    station = latest_health(subscriber)["stations"]["check"]
    assert station["ok"] == 2
    assert station["ng"] == 1
    assert station["yield"] == pytest.approx(2 / 3, abs=1e-3)
    assert station["ng_by_class"] == {"bright": 1}
    assert station["missed_triggers"] == 0
    assert station["latency_ms"]["p50"] > 0
    assert station["images"]["saved"] == 1
    # On the gateway, `shopfloor status` shows the station from the outbox file.
    status = subprocess.run(
        [sys.executable, "-m", "agent", "status", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"check .* connected .* 3 .* 66\.7% .* 1/0/0 .* part 103: OK", status.stdout)
    assert agent.stop() == 0


def test_triggers_faster_than_inference_are_counted_as_missed(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    model = brightness_classifier(tmp_path / "slow.onnx", slow_matmuls=1200)
    folder = frames_folder(tmp_path / "frames", [40])
    config = station_config(
        tmp_path,
        broker.port,
        modbus.port,
        camera={"folder": str(folder)},
        model=model,
        images={"save": "none"},
    )
    config_text = config.read_text().replace('"path"', '"threads": 1, "path"')
    config.write_text(config_text)
    subscriber, agent = start(config, broker, subscriber_factory, agent_factory)
    wait(lambda: coil(modbus, "ready"), 20, "ready")
    duration = inspect_part(modbus, 1)
    assert duration > 0.3, f"the slow model took only {duration:.3f} s; make it slower"

    # Six rising edges, each held long enough for the 20 ms poll to see both levels, all
    # within about one inspection time.
    edges = 6
    counter_before = register(modbus, "counter")
    pulse = max(0.06, duration / edges / 2)
    for _ in range(edges):
        modbus.set_registers("coil", COILS["trigger"], [True])
        time.sleep(pulse)
        modbus.set_registers("coil", COILS["trigger"], [False])
        time.sleep(pulse)

    def counted() -> int:
        station = latest_health(subscriber).get("stations", {}).get("check", {})
        return station.get("inspections", 0) + station.get("missed_triggers", 0)

    subscriber.wait_for(lambda: counted() == 1 + edges, 15, "every edge inspected or missed")
    station = latest_health(subscriber)["stations"]["check"]
    assert station["missed_triggers"] >= 2, station
    inspected = station["inspections"] - 1
    assert register(modbus, "counter") == counter_before + inspected
    assert "missed a trigger" in agent.log()
    assert agent.log().count("missed a trigger") == 1  # once per episode, not per trigger
    assert agent.stop() == 0


def test_lost_camera_answers_error_and_ng(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    model = brightness_classifier(tmp_path / "brightness.onnx")
    config = station_config(
        tmp_path,
        broker.port,
        modbus.port,
        camera={"source": f"http://127.0.0.1:{free_port()}/stream.mjpg", "timeout": "1s"},
        model=model,
    )
    subscriber, agent = start(config, broker, subscriber_factory, agent_factory)
    wait(lambda: register(modbus, "heartbeat") >= 2, 20, "the station's heartbeat")
    # Without a camera the station is alive but not ready.
    assert coil(modbus, "ready") is False
    inspect_part(modbus, 7)
    assert coil(modbus, "error") is True
    assert coil(modbus, "ng") is True  # an error also asserts NG
    assert coil(modbus, "ok") is False
    assert register(modbus, "error_code") == 1
    assert register(modbus, "class_id", signed=True) == -1
    subscriber.wait_for(lambda: inspection_events(subscriber), 10, "the result event")
    [event] = inspection_events(subscriber)
    assert event["data"]["verdict"] == "error"
    assert event["data"]["error_code"] == 1
    assert event["data"]["part_id"] == 7
    assert agent.stop() == 0


def test_inspect_command_starts_an_inspection(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    from tests.faults.test_commands import Commander

    model = brightness_classifier(tmp_path / "brightness.onnx")
    folder = frames_folder(tmp_path / "frames", [220])
    config = station_config(
        tmp_path,
        broker.port,
        modbus.port,
        camera={"folder": str(folder)},
        model=model,
        trigger={"point": "sorter.trigger", "command": True},
    )
    subscriber, agent = start(config, broker, subscriber_factory, agent_factory)
    commander = Commander(broker.port)
    try:
        commander.wait_ready()
        commander.send("inspect", {"station": "check", "id": "first"})
        subscriber.wait_for(lambda: inspection_events(subscriber), 10, "the result event")
        [event] = inspection_events(subscriber)
        assert event["data"]["trigger"] == "command"
        assert event["data"]["verdict"] == "ng"
        wait(lambda: register(modbus, "counter") == 1, 5, "the verdict in the PLC")
        assert coil(modbus, "ng") is True
        [reply] = commander.by_id("first")
        assert reply.body["ok"] is True
        assert reply.body["result"] == {"accepted": True, "station": "check"}
        commander.send("inspect", {"station": "nowhere", "id": "second"})
        wait(lambda: commander.by_id("second"), 5, "the refusal")
        [refusal] = commander.by_id("second")
        assert refusal.body["ok"] is False
        assert "check" in refusal.body["error"]  # the known stations are listed
    finally:
        commander.close()
    assert agent.stop() == 0


def test_a_write_the_plc_refuses_is_logged_once_and_the_result_still_published(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    model = brightness_classifier(tmp_path / "brightness.onnx")
    folder = frames_folder(tmp_path / "frames", [220])
    config = station_config(
        tmp_path,
        broker.port,
        modbus.port,
        camera={"folder": str(folder)},
        model=model,
        trigger={"interval": "300ms"},
        images={"save": "none"},
    )
    document = json.loads(config.read_text())
    # A register this PLC does not have: it answers "illegal data address".
    document["devices"][0]["points"].append(
        {"id": "sorter.missing", "address": "holding:5000", "type": "int16"}
    )
    document["stations"][0]["outputs"]["error_code"] = "sorter.missing"
    config.write_text(json.dumps(document))
    subscriber, agent = start(config, broker, subscriber_factory, agent_factory)
    subscriber.wait_for(lambda: len(inspection_events(subscriber)) >= 4, 15, "4 results")
    events = inspection_events(subscriber)
    assert all(e["data"]["plc_written"] is False for e in events)
    assert all(e["data"]["verdict"] == "ng" for e in events)
    # The writes before the refused one arrived; the verdict reached the PLC.
    assert coil(modbus, "ng") is True
    assert agent.log().count("cannot write error_code=0 to sorter.missing") == 1
    station = latest_health(subscriber)["stations"]["check"]
    assert station["plc_write_errors"] >= 4
    assert station["internal_errors"] == 0
    assert agent.stop() == 0


def test_regions_of_interest_several_models_and_sampled_ok_images(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    model = brightness_classifier(tmp_path / "brightness.onnx")
    folder = tmp_path / "frames"
    folder.mkdir()
    # Left half dark, right half bright: only a model that looks at the right half sees NG.
    frame = np.full((48, 64, 3), 30, dtype=np.uint8)
    frame[:, 32:] = 230
    cv2.imwrite(str(folder / "000.png"), frame)
    cv2.imwrite(str(folder / "001.png"), np.full((48, 64, 3), 30, dtype=np.uint8))
    config = station_config(
        tmp_path,
        broker.port,
        modbus.port,
        camera={"folder": str(folder)},
        model=model,
        rois=[
            {"name": "left", "x": 0, "y": 0, "width": 32, "height": 48},
            {"name": "right", "x": 32, "y": 0, "width": 32, "height": 48},
        ],
        images={"save": "ng", "ok_sample_every": 1},
    )
    document = json.loads(config.read_text())
    document["stations"][0]["models"] = [
        {"path": str(model), "name": "left-eye", "rois": ["left"]},
        {"path": str(model), "name": "both-eyes", "threshold": 0.9},
    ]
    config.write_text(json.dumps(document))
    subscriber, agent = start(config, broker, subscriber_factory, agent_factory)
    wait(lambda: coil(modbus, "ready"), 20, "ready")
    inspect_part(modbus, 1)
    assert coil(modbus, "ng") is True
    inspect_part(modbus, 2)
    assert coil(modbus, "ok") is True
    subscriber.wait_for(lambda: len(inspection_events(subscriber)) == 2, 10, "2 results")
    first, second = (event["data"] for event in inspection_events(subscriber))
    left_eye, both_eyes = first["models"]
    assert left_eye["name"] == "left-eye"
    assert [r["roi"] for r in left_eye["rois"]] == ["left"]
    assert left_eye["verdict"] == "ok"
    assert [(r["roi"], r["verdict"]) for r in both_eyes["rois"]] == [
        ("left", "ok"),
        ("right", "ng"),
    ]
    assert first["verdict"] == "ng"
    assert first["class"] == "bright"
    assert second["verdict"] == "ok"
    # The NG image and, with ok_sample_every: 1, the OK one.
    wait(lambda: len(list((tmp_path / "data").rglob("*.jpg"))) == 2, 5, "both images")
    names = sorted(path.name.split("_", 1)[1] for path in (tmp_path / "data").rglob("*.jpg"))
    assert names == ["1_ng.jpg", "2_ok.jpg"]
    assert agent.stop() == 0


def test_the_shipped_washer_models_judge_generated_parts_in_a_station(
    broker, modbus, subscriber_factory, agent_factory, tmp_path
):
    from drivers.simulate.parts import make_part
    from inference.models import WASHER_ANOMALY, WASHER_CLASSIFIER

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(4242)
    labels = ["ok", "spot", "ok", "chip", "scratch"]
    for index, label in enumerate(labels):
        cv2.imwrite(str(folder / f"{index:03d}.png"), make_part(rng, label))
    config = station_config(
        tmp_path,
        broker.port,
        modbus.port,
        camera={"folder": str(folder)},
        model=WASHER_CLASSIFIER,
        images={"save": "ng"},
    )
    document = json.loads(config.read_text())
    document["stations"][0]["models"].append({"path": str(WASHER_ANOMALY)})
    config.write_text(json.dumps(document))
    subscriber, agent = start(config, broker, subscriber_factory, agent_factory)
    wait(lambda: coil(modbus, "ready"), 20, "ready")
    for part_id in range(1, len(labels) + 1):
        inspect_part(modbus, part_id)
    subscriber.wait_for(lambda: len(inspection_events(subscriber)) == 5, 10, "5 results")
    events = [event["data"] for event in inspection_events(subscriber)]
    assert [e["verdict"] for e in events] == ["ok" if x == "ok" else "ng" for x in labels]
    # The class comes from the classifier, the first model that names classes.
    assert [e["class"] for e in events if e["verdict"] == "ng"] == ["spot", "chip", "scratch"]
    families = [m["family"] for m in events[0]["models"]]
    assert families == ["classifier", "anomalib_v2"]
    wait(lambda: len(list((tmp_path / "data").rglob("*.jpg"))) == 3, 5, "3 NG images")
    assert agent.stop() == 0
