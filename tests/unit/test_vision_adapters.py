"""Model families through real onnxruntime sessions: classifiers, YOLO raw and end-to-end,
anomalib 2.x and 1.x, the metadata and sidecar that describe them, and the layouts refused."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from inference.session import (
    ModelError,
    UnknownModelLayout,
    make_session,
    parse_metadata_value,
)
from inference.vision.adapters import Box, load_vision_model
from tests.onnx_graphs import (
    anomalib_v1_model,
    anomalib_v2_model,
    channel_mean_classifier,
    constant_model,
    metadata_json,
    yolo_e2e_tensor,
    yolo_raw_tensor,
)

NAMES_3 = {0: "ok", 1: "scratch", 2: "spot"}


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def _blank(height: int = 48, width: int = 64) -> np.ndarray:
    return np.zeros((height, width, 3), dtype=np.uint8)


# -- sessions ------------------------------------------------------------------------------


def test_sessions_run_on_the_cpu_without_spinning(tmp_path: Path) -> None:
    session = make_session(channel_mean_classifier(tmp_path / "m.onnx"), threads=2)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_sessions_default_to_one_thread_per_available_core(tmp_path: Path) -> None:
    session = make_session(channel_mean_classifier(tmp_path / "m.onnx"))
    assert session.get_session_options().intra_op_num_threads == len(os.sched_getaffinity(0))


def test_a_missing_or_broken_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"missing\.onnx does not exist"):
        make_session(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"broken\.onnx cannot be loaded by onnxruntime"):
        load_vision_model(broken)


# -- classifiers ---------------------------------------------------------------------------


def test_classifier_logits_are_softmaxed_and_ok_wins(tmp_path: Path) -> None:
    logits = [2.0, 0.5, 0.1]
    path = constant_model(
        tmp_path / "c.onnx",
        {"logits": np.array([logits], dtype=np.float32)},
        metadata={"names": NAMES_3, "output": "logits"},
    )
    model = load_vision_model(path, threads=1)
    assert model.family == "classifier"
    output, timings = model.infer(_blank())
    expected = _softmax(logits)
    assert output.probabilities == pytest.approx(dict(zip(NAMES_3.values(), expected, strict=True)))
    assert output.score == pytest.approx(expected[1] + expected[2])
    assert not output.ng
    assert (output.class_id, output.class_name) == (0, "ok")
    assert output.boxes == [] and output.anomaly_map is None
    assert min(timings.preprocess_ms, timings.inference_ms, timings.postprocess_ms) >= 0


def test_classifier_ng_is_the_sum_of_ng_classes_and_names_the_likeliest(tmp_path: Path) -> None:
    # No single defect beats "ok", but together they do.
    path = constant_model(
        tmp_path / "c.onnx",
        {"probs": np.array([[0.4, 0.35, 0.25]], dtype=np.float32)},
        metadata={"names": NAMES_3, "output": "probabilities"},
    )
    output, _ = load_vision_model(path).infer(_blank())
    assert output.ng
    assert output.score == pytest.approx(0.6)
    assert (output.class_id, output.class_name) == (1, "scratch")
    assert output.probabilities == pytest.approx({"ok": 0.4, "scratch": 0.35, "spot": 0.25})
    # A stricter threshold from the station: OK, and the class is the overall argmax.
    strict, _ = load_vision_model(path, threshold=0.7).infer(_blank())
    assert not strict.ng and strict.class_name == "ok"
    # Only spots are defects: 0.25 < 0.5.
    spots, _ = load_vision_model(path, ng_classes=["spot"]).infer(_blank())
    assert not spots.ng and spots.score == pytest.approx(0.25)


def test_classifier_output_kind_is_decided_per_run_when_not_declared(tmp_path: Path) -> None:
    probabilities = constant_model(
        tmp_path / "p.onnx", {"out": np.array([[0.2, 0.5, 0.3]], dtype=np.float32)}
    )
    output, _ = load_vision_model(probabilities).infer(_blank())
    assert output.probabilities == pytest.approx({"class0": 0.2, "class1": 0.5, "class2": 0.3})
    logits = constant_model(tmp_path / "l.onnx", {"out": np.array([[3.0, 1.0]], dtype=np.float32)})
    output, _ = load_vision_model(logits).infer(_blank())
    assert output.probabilities == pytest.approx(
        dict(zip(["class0", "class1"], _softmax([3, 1]), strict=True))
    )


@pytest.mark.parametrize(
    ("value", "kind", "score", "ng"),
    [(1.5, "logits", 1 / (1 + math.exp(-1.5)), True), (0.2, "probabilities", 0.2, False)],
)
def test_single_output_classifier_is_the_probability_of_ng(
    tmp_path: Path, value: float, kind: str, score: float, ng: bool
) -> None:
    path = constant_model(
        tmp_path / "b.onnx",
        {"out": np.array([[value]], dtype=np.float32)},
        metadata={"output": kind},
    )
    model = load_vision_model(path)
    assert model.description.names == {0: "ok", 1: "ng"}
    assert model.description.ng_classes == ("ng",)
    output, _ = model.infer(_blank())
    assert output.score == pytest.approx(score)
    assert output.ng is ng
    assert output.class_name == ("ng" if ng else "ok")
    assert output.probabilities == pytest.approx({"ok": 1 - score, "ng": score})


def test_default_ng_classes_skip_classes_named_good(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "c.onnx",
        {"out": np.array([[0.1, 0.8, 0.1]], dtype=np.float32)},
        metadata={"names": ["scratch", "Good", "chip"]},
    )
    model = load_vision_model(path)
    assert model.description.ng_classes == ("scratch", "chip")
    assert model.description.origin["ng_classes"] == "default"
    output, _ = model.infer(_blank())
    assert not output.ng and output.class_name == "Good"


@pytest.mark.parametrize(("color", "expected"), [("RGB", "red"), ("BGR", "blue")])
def test_real_classifier_sees_channels_in_the_declared_order(
    tmp_path: Path, color: str, expected: str
) -> None:
    path = channel_mean_classifier(
        tmp_path / "colour.onnx",
        softmax=True,
        metadata={
            "names": ["red", "green", "blue"],
            "color": color,
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
            "output": "probabilities",
            "ng_classes": ["green"],
        },
    )
    frame = _blank(100, 100)
    frame[:, :, 2] = 255  # red in OpenCV's BGR order
    output, _ = load_vision_model(path).infer(frame)
    assert output.class_name == expected
    assert output.probabilities is not None and output.probabilities[expected] > 0.99


# -- YOLO ----------------------------------------------------------------------------------

# A 400 x 300 ROI at (100, 50) letterboxed into 320 x 320: scale 0.8, 40 px bands above and
# below. A frame box (x1, y1, x2, y2) is at input ((x1 - 100) * 0.8, (y1 - 50) * 0.8 + 40).
ROI = (100, 50, 400, 300)
ULTRALYTICS_METADATA = {
    "author": "Ultralytics",
    "task": "detect",
    "names": "{0: 'part', 1: 'scratch', 2: 'dent'}",
    "imgsz": "[320, 320]",
    "stride": "32",
    "batch": "1",
}


def _to_input(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    return (x1 - 100) * 0.8, (y1 - 50) * 0.8 + 40, (x2 - 100) * 0.8, (y2 - 50) * 0.8 + 40


def _centred(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def _crop(frame: np.ndarray) -> np.ndarray:
    x, y, w, h = ROI
    return frame[y : y + h, x : x + w]


def _frame_box(box: Box) -> tuple[float, float, float, float]:
    return box.x1, box.y1, box.x2, box.y2


def test_yolo_raw_boxes_come_back_in_frame_pixels_after_nms(tmp_path: Path) -> None:
    scratch = (200.0, 150.0, 260.0, 200.0)
    part = (120.0, 60.0, 480.0, 330.0)
    detections = [
        (*_centred(_to_input(*scratch)), 1, 0.9),
        # The same scratch found again, shifted by 2 px: suppressed.
        (*_centred(_to_input(202, 152, 262, 202)), 1, 0.7),
        # A dent at the same place: another class, kept.
        (*_centred(_to_input(*scratch)), 2, 0.4),
        (*_centred(_to_input(*part)), 0, 0.95),
        # Below the confidence threshold (0.25): dropped.
        (*_centred(_to_input(300, 100, 340, 140)), 1, 0.1),
    ]
    path = constant_model(
        tmp_path / "yolo.onnx",
        {"output0": yolo_raw_tensor(detections, classes=3)},
        input_shape=(1, 3, 320, 320),
        metadata=ULTRALYTICS_METADATA,
    )
    model = load_vision_model(path, ng_classes=["scratch", "dent"])
    assert model.family == "yolo_raw"
    assert model.description.resize == "letterbox" and model.description.threshold == 0.25
    output, _ = model.infer(_crop(_blank(480, 640)), roi_origin=ROI[:2])
    found = {(b.class_name, round(b.score, 2)): _frame_box(b) for b in output.boxes}
    assert set(found) == {("part", 0.95), ("scratch", 0.9), ("dent", 0.4)}
    assert found["scratch", 0.9] == pytest.approx(scratch, abs=1.0)
    assert found["dent", 0.4] == pytest.approx(scratch, abs=1.0)
    assert found["part", 0.95] == pytest.approx(part, abs=1.0)
    assert [b.score for b in output.boxes] == sorted((b.score for b in output.boxes), reverse=True)
    # The part is not a defect: the verdict comes from the best NG box.
    assert output.ng
    assert (output.class_id, output.class_name) == (1, "scratch")
    assert output.score == pytest.approx(0.9)


def test_yolo_without_ng_boxes_is_ok(tmp_path: Path) -> None:
    detections = [(*_centred(_to_input(120, 60, 480, 330)), 0, 0.95)]
    path = constant_model(
        tmp_path / "yolo.onnx",
        {"output0": yolo_raw_tensor(detections, classes=3)},
        input_shape=(1, 3, 320, 320),
        metadata={**ULTRALYTICS_METADATA, "ng_classes": '["scratch", "dent"]'},
    )
    output, _ = load_vision_model(path).infer(_crop(_blank(480, 640)), roi_origin=ROI[:2])
    assert [b.class_name for b in output.boxes] == ["part"]
    assert not output.ng
    assert (output.score, output.class_id, output.class_name) == (0.0, -1, None)


def test_yolo_every_class_is_ng_by_default_and_boxes_stay_inside_the_roi(tmp_path: Path) -> None:
    # A box hanging over the left edge of the content (into nothing).
    detections = [(10.0, 160.0, 60.0, 40.0, 0, 0.8)]
    path = constant_model(
        tmp_path / "yolo.onnx",
        {"output0": yolo_raw_tensor(detections, classes=2, anchors=500)},
        input_shape=(1, 3, 320, 320),
    )
    model = load_vision_model(path)
    assert model.description.ng_classes == ()
    assert model.description.names == {0: "class0", 1: "class1"}
    output, _ = model.infer(_crop(_blank(480, 640)), roi_origin=ROI[:2])
    assert output.ng and output.class_name == "class0"
    (box,) = output.boxes
    assert box.x1 == ROI[0]  # clipped to the ROI's left edge
    assert (box.y1, box.x2, box.y2) == pytest.approx((175.0, 150.0, 225.0), abs=1.0)


def test_yolo_end_to_end_filters_by_confidence_only(tmp_path: Path) -> None:
    scratch = (200.0, 150.0, 260.0, 200.0)
    rows = [
        (*_to_input(*scratch), 0.8, 1),
        (*_to_input(202, 152, 262, 202), 0.6, 1),  # no NMS: kept
        (*_to_input(300, 100, 340, 140), 0.2, 2),  # below 0.25
    ]
    path = constant_model(
        tmp_path / "e2e.onnx",
        {"output0": yolo_e2e_tensor(rows)},
        input_shape=(1, 3, 320, 320),
        metadata={**ULTRALYTICS_METADATA, "end2end": "True"},
    )
    model = load_vision_model(path)
    assert model.family == "yolo_e2e"
    output, _ = model.infer(_crop(_blank(480, 640)), roi_origin=ROI[:2])
    assert [(b.class_name, round(b.score, 2)) for b in output.boxes] == [
        ("scratch", 0.8),
        ("scratch", 0.6),
    ]
    assert _frame_box(output.boxes[0]) == pytest.approx(scratch, abs=1.0)
    assert output.ng and output.score == pytest.approx(0.8)


# -- anomalib ------------------------------------------------------------------------------


@pytest.mark.parametrize("score_shape", [(1,), (1, 1)])
def test_anomalib_v2_score_and_map_sized_like_the_crop(
    tmp_path: Path, score_shape: tuple[int, ...]
) -> None:
    path = anomalib_v2_model(tmp_path / "anomaly.onnx", score_shape=score_shape)
    model = load_vision_model(path)
    assert model.family == "anomalib_v2"
    assert (model.description.threshold, model.description.resize) == (0.5, "stretch")
    crop = _blank(90, 120)
    crop[30:60, 80:110] = 255  # a bright defect at rows 30..60, columns 80..110
    output, _ = model.infer(crop, roi_origin=(500, 400))
    assert output.ng and output.score == pytest.approx(1.0)
    assert (output.class_id, output.class_name) == (-1, "anomaly")
    anomaly_map = output.anomaly_map
    assert anomaly_map is not None
    assert anomaly_map.shape == (90, 120) and anomaly_map.dtype == np.float32
    assert anomaly_map.min() >= 0.0 and anomaly_map.max() <= 1.0
    assert anomaly_map[45, 95] == pytest.approx(1.0)
    assert anomaly_map[10, 10] == pytest.approx(0.0)
    hot_rows, hot_cols = np.nonzero(anomaly_map > 0.5)
    assert abs(hot_rows.min() - 30) <= 3 and abs(hot_rows.max() - 59) <= 3
    assert abs(hot_cols.min() - 80) <= 3 and abs(hot_cols.max() - 109) <= 3
    clean, _ = model.infer(_blank(90, 120))
    assert not clean.ng and clean.score == pytest.approx(0.0) and clean.class_name is None


def _v1_expected(model_path: Path, crop: np.ndarray) -> tuple[float, np.ndarray]:
    """The raw map of the v1 test graph: 10 x the channel mean of the normalised input."""
    model = load_vision_model(model_path)
    tensor, _ = model.prepare(crop)
    raw_map = 10.0 * tensor[0].mean(axis=0)
    return float(raw_map.max()), raw_map


def test_anomalib_v1_map_is_normalised_with_metadata_json(tmp_path: Path) -> None:
    path = anomalib_v1_model(tmp_path / "model.onnx")
    metadata_json(
        tmp_path / "metadata.json",
        image_threshold=12.0,
        pixel_threshold=10.0,
        scores=(-20.0, 30.0),
        maps=(-25.0, 25.0),
    )
    model = load_vision_model(path)
    assert model.family == "anomalib_v1"
    description = model.description
    # anomalib 1.x exports expect ImageNet-normalised input.
    assert description.mean == (0.485, 0.456, 0.406)
    assert description.origin["normalization"] == "metadata.json"
    crop = _blank(64, 64)
    crop[10:20, 10:20] = 255
    raw_score, raw_map = _v1_expected(path, crop)
    output, _ = model.infer(crop)
    expected = min(1.0, max(0.0, (raw_score - 12.0) / (30.0 - -20.0) + 0.5))
    assert output.score == pytest.approx(expected, abs=1e-5)
    assert output.ng is (expected >= 0.5)
    assert output.anomaly_map is not None and output.anomaly_map.shape == (64, 64)
    expected_map = np.clip((raw_map - 10.0) / 50.0 + 0.5, 0, 1)
    assert output.anomaly_map == pytest.approx(expected_map, abs=1e-4)


def test_anomalib_v1_score_output_with_task_anomaly(tmp_path: Path) -> None:
    path = anomalib_v1_model(
        tmp_path / "scores.onnx",
        score_only=True,
        metadata={"task": "anomaly", "mean": [0, 0, 0], "std": [1, 1, 1]},
    )
    metadata_json(
        tmp_path / "metadata.json",
        image_threshold=4.0,
        pixel_threshold=4.0,
        scores=(0.0, 10.0),
        maps=(0.0, 10.0),
    )
    model = load_vision_model(path)
    assert model.family == "anomalib_v1"
    bright = np.full((64, 64, 3), 255, dtype=np.uint8)  # raw score 10 -> (10-4)/10+0.5 = 1.1
    output, _ = model.infer(bright)
    assert output.score == 1.0 and output.ng and output.anomaly_map is None
    dark, _ = model.infer(_blank(64, 64))  # raw 0 -> 0.1
    assert dark.score == pytest.approx(0.1) and not dark.ng


def test_anomalib_v1_without_metadata_json_is_refused(tmp_path: Path) -> None:
    path = anomalib_v1_model(tmp_path / "model.onnx", metadata={"task": "anomaly"})
    with pytest.raises(ModelError, match=r"metadata\.json"):
        load_vision_model(path)


# -- metadata and sidecar ------------------------------------------------------------------


def test_metadata_values_are_json_then_literals_then_text(tmp_path: Path) -> None:
    assert parse_metadata_value("[640, 640]") == [640, 640]
    assert parse_metadata_value("0.35") == 0.35
    assert parse_metadata_value("{0: 'person', 1: 'bicycle'}") == {0: "person", 1: "bicycle"}
    assert parse_metadata_value("RGB") == "RGB"
    canary = tmp_path / "evaluated"
    hostile = f"__import__('pathlib').Path({str(canary)!r}).touch()"
    assert parse_metadata_value(hostile) == hostile  # text, never evaluated
    assert not canary.exists()


def test_ultralytics_metadata_is_understood(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "yolo11n.onnx",
        {"output0": yolo_raw_tensor([], classes=3)},
        input_shape=(1, 3, 320, 320),
        metadata=ULTRALYTICS_METADATA,
    )
    description = load_vision_model(path).description
    assert description.names == {0: "part", 1: "scratch", 2: "dent"}
    assert description.imgsz == (320, 320)
    assert description.task == "detect"
    assert description.name == "yolo11n"
    assert (description.scale, description.mean, description.std) == (1 / 255, (0.0,), (1.0,))
    assert description.pad_value == 114
    assert description.origin["names"] == "metadata"
    assert description.origin["imgsz"] == "metadata"
    assert description.origin["threshold"] == "default"


def test_ultralytics_classifier_takes_unnormalised_probabilities(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "yolo11n-cls.onnx",
        {"output0": np.array([[0.9, 0.1]], dtype=np.float32)},
        input_shape=(1, 3, 224, 224),
        metadata={
            **ULTRALYTICS_METADATA,
            "task": "classify",
            "names": "{0: 'good', 1: 'bad'}",
            "imgsz": "[224, 224]",
        },
    )
    description = load_vision_model(path).description
    assert description.family == "classifier"
    assert description.output == "probabilities"
    assert (description.mean, description.std) == ((0.0,), (1.0,))
    assert description.ng_classes == ("bad",)


def test_sidecar_overrides_the_metadata_key_by_key(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "washer.onnx",
        {"out": np.array([[0.7, 0.3]], dtype=np.float32)},
        metadata={"names": ["ok", "scratch"], "threshold": 0.5, "color": "RGB", "version": "1.0"},
    )
    (tmp_path / "washer.yaml").write_text(
        "# tuned on line 3\nthreshold: 0.25\ncolor: bgr\nscale: 1/255\nname: washer line 3\n",
        encoding="utf-8",
    )
    model = load_vision_model(path)
    description = model.description
    assert description.threshold == 0.25 and description.origin["threshold"] == "sidecar"
    assert description.color == "BGR" and description.origin["color"] == "sidecar"
    assert description.scale == pytest.approx(1 / 255)
    assert description.names == {0: "ok", 1: "scratch"}
    assert description.origin["names"] == "metadata"
    assert (model.name, model.version) == ("washer line 3", "1.0")
    output, _ = model.infer(_blank())
    assert output.ng and output.score == pytest.approx(0.3)
    # The station's configuration wins over both.
    configured = load_vision_model(path, threshold=0.4).description
    assert configured.threshold == 0.4 and configured.origin["threshold"] == "config"


@pytest.mark.parametrize(
    ("sidecar", "key"),
    [
        ("threshold: high\n", "threshold"),
        ("threshold: 1.5\n", "threshold"),
        ("color: RGBA\n", "color"),
        ("mean: [0.1, 0.2]\n", "mean"),
        ("imgsz: [32, 32, 3]\n", "imgsz"),
        ("ng_classes: [dust]\n", "ng_classes"),
        ("treshold: 0.4\n", "treshold"),
    ],
)
def test_a_bad_sidecar_names_the_file_and_the_key(tmp_path: Path, sidecar: str, key: str) -> None:
    path = constant_model(
        tmp_path / "washer.onnx",
        {"out": np.array([[0.7, 0.3]], dtype=np.float32)},
        metadata={"names": ["ok", "scratch"]},
    )
    (tmp_path / "washer.yaml").write_text(sidecar, encoding="utf-8")
    with pytest.raises(ModelError) as raised:
        load_vision_model(path)
    message = str(raised.value)
    assert str(tmp_path / "washer.yaml") in message
    assert key in message


def test_a_sidecar_that_is_not_yaml_names_the_file(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "m.onnx", {"out": np.array([[0.5, 0.5]], dtype=np.float32)})
    (tmp_path / "m.yaml").write_text("threshold: [0.5\n", encoding="utf-8")
    with pytest.raises(ModelError, match=r"m\.yaml is not valid YAML"):
        load_vision_model(path)


def test_bad_metadata_names_the_key(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "m.onnx",
        {"out": np.array([[0.5, 0.5]], dtype=np.float32)},
        metadata={"resize": "crop"},
    )
    with pytest.raises(ModelError, match=r"metadata of .*m\.onnx: key 'resize'"):
        load_vision_model(path)


def test_names_must_match_the_output(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "m.onnx",
        {"out": np.array([[0.5, 0.5]], dtype=np.float32)},
        metadata={"names": ["ok", "scratch", "chip"]},
    )
    with pytest.raises(ModelError, match="names has 3 classes"):
        load_vision_model(path)


def test_a_dynamic_input_size_needs_imgsz_from_a_sidecar(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "dyn.onnx",
        {"out": np.array([[0.5, 0.5]], dtype=np.float32)},
        input_shape=("batch", 3, "height", "width"),
    )
    with pytest.raises(ModelError, match=r"imgsz: \[height, width\] in the sidecar dyn\.yaml"):
        load_vision_model(path)
    (tmp_path / "dyn.yaml").write_text("imgsz: [48, 80]\n", encoding="utf-8")
    model = load_vision_model(path)
    assert model.description.imgsz == (48, 80)
    tensor, _ = model.prepare(_blank(10, 10))
    assert tensor.shape == (1, 3, 48, 80)


# -- layouts refused -----------------------------------------------------------------------


def test_an_unknown_layout_lists_the_outputs_and_the_fix(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "seg.onnx",
        {
            "output0": np.zeros((1, 37, 8), dtype=np.float32),
            "output1": np.zeros((1, 32, 4, 4), dtype=np.float32),
        },
    )
    with pytest.raises(UnknownModelLayout) as raised:
        load_vision_model(path)
    message = str(raised.value)
    assert "output0 [1, 37, 8]" in message and "output1 [1, 32, 4, 4]" in message
    assert "task: detect" in message and "seg.yaml" in message
    assert "anomalib" in message and "[N, 300, 6]" in message


def test_an_unsupported_ultralytics_task_is_an_unknown_layout(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "pose.onnx",
        {"output0": np.zeros((1, 56, 2100), dtype=np.float32)},
        input_shape=(1, 3, 320, 320),
        metadata={**ULTRALYTICS_METADATA, "task": "pose", "names": "{0: 'person'}"},
    )
    with pytest.raises(UnknownModelLayout, match="task 'pose'"):
        load_vision_model(path)


def test_a_sidecar_task_picks_the_family_of_an_ambiguous_model(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "two.onnx",
        {
            "scores": np.array([[0.1, 0.9]], dtype=np.float32),
            "features": np.zeros((1, 16), dtype=np.float32),
        },
    )
    with pytest.raises(UnknownModelLayout):
        load_vision_model(path)
    (tmp_path / "two.yaml").write_text("task: classify\nnames: [ok, ng]\n", encoding="utf-8")
    model = load_vision_model(path)
    assert model.family == "classifier" and model.description.primary_output == "scores"
    output, _ = model.infer(_blank())
    assert output.ng and output.class_name == "ng"


def test_non_finite_outputs_are_an_error_not_a_verdict(tmp_path: Path) -> None:
    # fp16 overflow or a broken quantisation gives NaN, which compares below every threshold:
    # it must not pass a part as OK.
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        path = constant_model(
            tmp_path / f"{name}.onnx",
            {"scores": np.array([[0.1, value]], dtype=np.float32)},
            metadata={"task": "classify"},
        )
        model = load_vision_model(path)
        with pytest.raises(ModelError, match="not finite"):
            model.infer(_blank(64, 64))


def test_a_shared_metadata_json_does_not_turn_a_classifier_into_anomalib_v1(
    tmp_path: Path,
) -> None:
    # Models of several families in one folder, an anomalib 1.x one with its metadata.json.
    metadata_json(
        tmp_path / "metadata.json",
        image_threshold=12.0,
        pixel_threshold=10.0,
        scores=(-20.0, 30.0),
        maps=(-25.0, 25.0),
    )
    path = constant_model(
        tmp_path / "classifier.onnx", {"logits": np.array([[0.1, 3.0]], dtype=np.float32)}
    )
    model = load_vision_model(path)
    assert model.family == "classifier"
    output, _ = model.infer(_blank(64, 64))
    assert output.ng
    assert output.score > 0.9
