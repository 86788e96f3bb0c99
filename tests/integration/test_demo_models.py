"""The shipped demo models still do their job on washers they have never seen.

A fresh held-out set is drawn from drivers/simulate/parts.py with a seed no training tool uses,
and the ONNX files in inference/models/ run on it with plain onnxruntime. Inputs are prepared
from each model's own metadata_props (what the agent reads too), so a model retrained with another
input format still passes, and a metadata mistake fails here. The frames are used as drawn and
after a JPEG round trip, as the demo's simulated camera sends them.

Measured on this set (seed 31337) with the shipped models: the classifier is right on 400 of
400 parts; the anomaly model flags 98% of spots, 95% of chips, 5% of scratches (a 1 px line is
faint at 128x128) and no good part. On other seeds: classifier 99.6 to 100%, anomaly 98 to 100%
of spots, 89 to 96% of chips, 0 to 3% of good parts. The bounds leave a margin.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import onnxruntime
import pytest
from numpy.typing import NDArray

from drivers.simulate.parts import DEFECTS, PartStream, make_dataset, make_part
from tests.conftest import REPO

MODELS = REPO / "inference" / "models"
# The tools train on seeds 1 and 2 and validate on 1001, 1002 and 2002.
HOLDOUT_SEED = 31337
HOLDOUT_COUNT = 400
JPEG_QUALITY = 80

Images = NDArray[np.uint8]


def as_drawn(images: Images) -> Images:
    return images


def through_jpeg(images: Images) -> Images:
    """Each frame encoded and decoded as JPEG, as the MJPEG camera delivers it."""
    decoded = []
    for image in images:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        assert ok
        decoded.append(cv2.imdecode(encoded, cv2.IMREAD_COLOR))
    return np.stack(decoded)


FRAMES: dict[str, Callable[[Images], Images]] = {"as drawn": as_drawn, "jpeg": through_jpeg}


def parse(value: str) -> Any:
    """A metadata value: JSON, else a Python literal, else the string itself."""
    try:
        return json.loads(value)
    except ValueError:
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def open_model(file_name: str) -> tuple[onnxruntime.InferenceSession, dict[str, Any]]:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(
        str(MODELS / file_name), options, providers=["CPUExecutionProvider"]
    )
    metadata = session.get_modelmeta().custom_metadata_map
    return session, {key: parse(value) for key, value in metadata.items()}


def prepare(images_bgr: Images, metadata: dict[str, Any]) -> NDArray[np.float32]:
    """NCHW float32 input from BGR frames, as the metadata describes it (defaults: anomalib v2)."""
    height, width = metadata["imgsz"]
    assert metadata.get("resize", "stretch") == "stretch"
    color = metadata.get("color", "RGB")
    scale = float(metadata.get("scale", 1 / 255))
    mean = np.array(metadata.get("mean", [0.0]), np.float32).reshape(1, -1, 1, 1)
    std = np.array(metadata.get("std", [1.0]), np.float32).reshape(1, -1, 1, 1)
    batch = []
    for image in images_bgr:
        if color == "GRAY":
            converted = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
        elif color == "RGB":
            converted = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        else:
            converted = image
        resized = cv2.resize(converted, (width, height), interpolation=cv2.INTER_LINEAR)
        batch.append(resized.reshape(height, width, -1))
    tensor = np.stack(batch).transpose(0, 3, 1, 2).astype(np.float32) * np.float32(scale)
    return np.ascontiguousarray((tensor - mean) / std)


@pytest.fixture(scope="module")
def holdout() -> tuple[Images, NDArray[np.int64]]:
    return make_dataset(HOLDOUT_SEED, HOLDOUT_COUNT)


def per_class(labels: NDArray[np.int64], hits: NDArray[np.bool_]) -> str:
    return ", ".join(
        f"{name} {hits[labels == index].mean():.3f}" for index, name in enumerate(DEFECTS)
    )


@pytest.mark.parametrize("frames", FRAMES)
def test_classifier_is_accurate_on_unseen_parts(
    holdout: tuple[Images, NDArray[np.int64]], frames: str
) -> None:
    images, labels = holdout
    session, metadata = open_model("washer_classifier.onnx")
    assert metadata["task"] == "classify"
    assert metadata["output"] == "logits"
    names = {int(key): value for key, value in metadata["names"].items()}
    assert [names[index] for index in range(len(DEFECTS))] == list(DEFECTS)
    ng_indices = [index for index, name in names.items() if name in metadata["ng_classes"]]

    tensor = prepare(FRAMES[frames](images), metadata)
    (logits,) = session.run(None, {session.get_inputs()[0].name: tensor})
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = exponentials / exponentials.sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(axis=1)
    predicted_ng = probabilities[:, ng_indices].sum(axis=1) >= float(metadata["threshold"])

    accuracy = float((predicted == labels).mean())
    ok_vs_ng = float((predicted_ng == (labels != 0)).mean())
    summary = (
        f"{frames}: accuracy {accuracy:.3f}, OK vs NG {ok_vs_ng:.3f}; recall per class: "
        f"{per_class(labels, predicted == labels)}"
    )
    assert accuracy >= 0.95, summary
    assert ok_vs_ng >= 0.95, summary


def test_anomaly_model_has_the_anomalib_v2_layout() -> None:
    session, metadata = open_model("washer_anomaly.onnx")
    assert metadata["name"] == "washer-anomaly"
    assert metadata["task"] == "anomaly"
    height, width = metadata["imgsz"]
    (model_input,) = session.get_inputs()
    assert model_input.name == "input"
    assert model_input.type == "tensor(float)"
    assert model_input.shape[1:] == [3, height, width]
    outputs = {output.name: output.type for output in session.get_outputs()}
    assert outputs == {
        "pred_score": "tensor(float)",
        "pred_label": "tensor(bool)",
        "anomaly_map": "tensor(float)",
        "pred_mask": "tensor(bool)",
    }

    image = make_part(np.random.default_rng(HOLDOUT_SEED), "spot")
    results = session.run(None, {"input": prepare(image[None], metadata)})
    score, label, anomaly_map, mask = (
        dict(zip([output.name for output in session.get_outputs()], results, strict=True))[name]
        for name in ("pred_score", "pred_label", "anomaly_map", "pred_mask")
    )
    assert score.shape == (1,) and label.shape == (1,)
    assert anomaly_map.shape[:2] == (1, 1) and mask.shape == anomaly_map.shape
    assert 0.0 <= score[0] <= 1.0
    assert anomaly_map.min() >= 0.0 and anomaly_map.max() <= 1.0
    # Normalised so that 0.5 is the threshold, for the score and for every pixel of the map.
    assert label[0] == (score[0] >= 0.5)
    np.testing.assert_array_equal(mask, anomaly_map >= 0.5)


@pytest.mark.parametrize("frames", FRAMES)
def test_anomaly_model_flags_spots_and_chips_but_not_good_parts(
    holdout: tuple[Images, NDArray[np.int64]], frames: str
) -> None:
    images, labels = holdout
    session, metadata = open_model("washer_anomaly.onnx")
    tensor = prepare(FRAMES[frames](images), metadata)
    names = [output.name for output in session.get_outputs()]
    results = dict(zip(names, session.run(None, {"input": tensor}), strict=True))
    flagged = results["pred_label"].reshape(-1)

    rates = {name: float(flagged[labels == index].mean()) for index, name in enumerate(DEFECTS)}
    summary = f"{frames}: share judged NG per class: {per_class(labels, flagged)}"
    assert rates["ok"] <= 0.05, summary
    assert rates["spot"] >= 0.90, summary
    assert rates["chip"] >= 0.80, summary


def test_parts_are_deterministic_by_seed() -> None:
    for defect in DEFECTS:
        first = make_part(np.random.default_rng(7), defect)
        again = make_part(np.random.default_rng(7), defect)
        other = make_part(np.random.default_rng(8), defect)
        assert first.shape == (256, 256, 3) and first.dtype == np.uint8
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)

    images, labels = make_dataset(5, 10)
    images_again, labels_again = make_dataset(5, 10)
    np.testing.assert_array_equal(images, images_again)
    np.testing.assert_array_equal(labels, labels_again)
    assert sorted(np.bincount(labels, minlength=len(DEFECTS))) == [2, 2, 3, 3]

    stream, same = PartStream(seed=3, defect_rate=0.5), PartStream(seed=3, defect_rate=0.5)
    for _ in range(5):
        (image, label), (image_again, label_again) = stream.next_part(), same.next_part()
        assert label == label_again and label in DEFECTS
        np.testing.assert_array_equal(image, image_again)


def test_a_defect_changes_only_a_small_part_of_the_washer() -> None:
    # One seed draws one washer whatever its defect: the difference is the defect alone.
    good = make_part(np.random.default_rng(11), "ok").astype(np.int16)
    for defect in DEFECTS[1:]:
        damaged = make_part(np.random.default_rng(11), defect).astype(np.int16)
        changed = np.abs(damaged - good).max(axis=2) > 12
        assert 10 <= changed.sum() <= 600, f"{defect}: {changed.sum()} pixels changed"


def test_unknown_defect_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown defect 'dent'"):
        make_part(np.random.default_rng(0), "dent")
