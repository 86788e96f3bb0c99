"""Small ONNX graphs built with onnx.helper, for tests that need real onnxruntime sessions.

Each builder writes a model file and returns its path. The graphs are tiny and either compute
something simple from the image (channel means, a per-pixel anomaly map) or return fixed
tensors (a YOLO output with known boxes) while still reading the input, so a test knows
exactly what the model answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "anomalib_v1_model",
    "anomalib_v2_model",
    "channel_mean_classifier",
    "constant_model",
    "metadata_json",
    "yolo_e2e_tensor",
    "yolo_raw_tensor",
]

OPSET = 17
IR_VERSION = 8

_ELEMENT_TYPES = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.bool_): TensorProto.BOOL,
    np.dtype(np.int64): TensorProto.INT64,
}


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    metadata: Mapping[str, Any] | None,
    initializers: Sequence[onnx.TensorProto] = (),
) -> Path:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests"
    )
    model.ir_version = IR_VERSION
    if metadata:
        helper.set_model_props(
            model,
            {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()},
        )
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _image_input(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def constant_model(
    path: Path,
    outputs: Mapping[str, np.ndarray],
    *,
    input_name: str = "images",
    input_shape: Sequence[int | str] = (1, 3, 64, 64),
    metadata: Mapping[str, Any] | None = None,
    declared_shapes: Mapping[str, Sequence[int | str]] | None = None,
) -> Path:
    """A model that returns fixed tensors whatever the image (float outputs are the constant
    plus 0 x the sum of the input, so the input is read). `declared_shapes` overrides the
    shape an output declares (e.g. symbolic dimensions)."""
    nodes = [
        helper.make_node("ReduceSum", [input_name], ["input_sum"], keepdims=0),
        helper.make_node(
            "Constant", [], ["zero"], value=numpy_helper.from_array(np.float32(0.0), "zero")
        ),
        helper.make_node("Mul", ["input_sum", "zero"], ["nothing"]),
    ]
    declared = declared_shapes or {}
    graph_outputs = []
    for name, value in outputs.items():
        array = np.asarray(value)
        constant = f"{name}_constant"
        nodes.append(
            helper.make_node(
                "Constant", [], [constant], value=numpy_helper.from_array(array, constant)
            )
        )
        if array.dtype == np.float32:
            nodes.append(helper.make_node("Add", [constant, "nothing"], [name]))
        else:
            nodes.append(helper.make_node("Identity", [constant], [name]))
        shape = list(declared.get(name, array.shape))
        graph_outputs.append(
            helper.make_tensor_value_info(name, _ELEMENT_TYPES[array.dtype], shape)
        )
    return _save(path, nodes, [_image_input(input_name, input_shape)], graph_outputs, metadata)


def channel_mean_classifier(
    path: Path,
    *,
    channels: int = 3,
    size: tuple[int, int] = (32, 32),
    softmax: bool = False,
    gain: float = 10.0,
    output_name: str = "output",
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """A classifier whose class i scores gain x the mean of input channel i (so the class
    is the dominant colour, in the order the model receives its channels)."""
    height, width = size
    weights = np.eye(channels, dtype=np.float32) * np.float32(gain)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["logits" if softmax else output_name]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    return _save(
        path,
        nodes,
        [_image_input("input", (1, channels, height, width))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, channels])],
        metadata,
        [numpy_helper.from_array(weights, "weights")],
    )


def anomalib_v2_model(
    path: Path,
    *,
    size: tuple[int, int] = (64, 64),
    score_shape: Sequence[int] = (1,),
    pool: int = 2,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """anomalib 2.x layout: input `input` [1, 3, H, W] (0..1), outputs pred_score,
    pred_label, anomaly_map [1, 1, H/pool, W/pool] (the brightness, averaged over pool x pool
    pixels) and pred_mask. pred_score is the map's maximum, shaped `score_shape` ([1] or
    [1, 1])."""
    height, width = size
    keep_axes = [2, 3] if len(score_shape) == 2 else [1, 2, 3]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["brightness"], axes=[1], keepdims=1),
        helper.make_node(
            "AveragePool",
            ["brightness"],
            ["anomaly_map"],
            kernel_shape=[pool, pool],
            strides=[pool, pool],
        ),
        helper.make_node("ReduceMax", ["anomaly_map"], ["pred_score"], axes=keep_axes, keepdims=0),
        helper.make_node(
            "Constant", [], ["half"], value=numpy_helper.from_array(np.float32(0.5), "half")
        ),
        helper.make_node("Greater", ["pred_score", "half"], ["pred_label"]),
        helper.make_node("Greater", ["anomaly_map", "half"], ["pred_mask"]),
    ]
    map_shape = [1, 1, height // pool, width // pool]
    outputs = [
        helper.make_tensor_value_info("pred_score", TensorProto.FLOAT, list(score_shape)),
        helper.make_tensor_value_info("pred_label", TensorProto.BOOL, list(score_shape)),
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, map_shape),
        helper.make_tensor_value_info("pred_mask", TensorProto.BOOL, map_shape),
    ]
    return _save(path, nodes, [_image_input("input", (1, 3, height, width))], outputs, metadata)


def anomalib_v1_model(
    path: Path,
    *,
    size: tuple[int, int] = (64, 64),
    gain: float = 10.0,
    score_only: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """anomalib 1.x layout: one output `output`, the raw (unnormalised) anomaly map
    gain x channel mean [1, 1, H, W], or with `score_only` its maximum [1]."""
    height, width = size
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["brightness"], axes=[1], keepdims=1),
        helper.make_node(
            "Constant", [], ["gain"], value=numpy_helper.from_array(np.float32(gain), "gain")
        ),
        helper.make_node("Mul", ["brightness", "gain"], ["raw_map" if score_only else "output"]),
    ]
    shape: list[int] = [1, 1, height, width]
    if score_only:
        nodes.append(
            helper.make_node("ReduceMax", ["raw_map"], ["output"], axes=[1, 2, 3], keepdims=0)
        )
        shape = [1]
    return _save(
        path,
        nodes,
        [_image_input("input", (1, 3, height, width))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        metadata,
    )


def metadata_json(
    path: Path,
    *,
    image_threshold: float,
    pixel_threshold: float,
    scores: tuple[float, float],
    maps: tuple[float, float],
) -> Path:
    """anomalib 1.x's metadata.json (flat keys, as its export writes them)."""
    path.write_text(
        json.dumps(
            {
                "task": "segmentation",
                "image_threshold": image_threshold,
                "pixel_threshold": pixel_threshold,
                "pred_scores.min": scores[0],
                "pred_scores.max": scores[1],
                "anomaly_maps.min": maps[0],
                "anomaly_maps.max": maps[1],
            }
        ),
        encoding="utf-8",
    )
    return path


def yolo_raw_tensor(
    detections: Sequence[tuple[float, float, float, float, int, float]],
    *,
    classes: int,
    anchors: int = 2100,
    background: float = 0.001,
) -> np.ndarray:
    """An Ultralytics raw output [1, 4+nc, A]: each detection (cx, cy, w, h, class, conf) in
    letterboxed input pixels takes one anchor; the other anchors hold tiny boxes with
    `background` scores."""
    tensor = np.full((1, 4 + classes, anchors), background, dtype=np.float32)
    tensor[0, :4, :] = np.array([[5.0], [5.0], [2.0], [2.0]], dtype=np.float32)
    for anchor, (cx, cy, w, h, class_id, confidence) in enumerate(detections):
        tensor[0, :4, anchor] = (cx, cy, w, h)
        tensor[0, 4 + class_id, anchor] = confidence
    return tensor


def yolo_e2e_tensor(
    detections: Sequence[tuple[float, float, float, float, float, int]], *, rows: int = 300
) -> np.ndarray:
    """An end-to-end output [1, rows, 6]: (x1, y1, x2, y2, conf, class) then zero rows."""
    tensor = np.zeros((1, rows, 6), dtype=np.float32)
    for row, detection in enumerate(detections):
        tensor[0, row] = detection
    return tensor
