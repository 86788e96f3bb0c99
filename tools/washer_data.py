"""Shared by the washer training tools: synthetic parts as the agent will see them, and the
ONNX file as the agent will read it.

The parts come from drivers/simulate/parts.py (the demo camera draws the same washers). What the
agent sees differs a little from the generator's output: the demo camera sends JPEG frames, and
the agent resizes with OpenCV, whose interpolation we do not choose. Training images pass through
both, at random, so the models do not depend on either.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
# The tools run as scripts from a checkout: make the project's packages importable.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from drivers.simulate.parts import DEFECTS, make_part  # noqa: E402

__all__ = ["DEFECTS", "REPO", "camera_view", "generate", "write_onnx"]

_INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_LINEAR)


def camera_view(
    rng: np.random.Generator, image_bgr: NDArray[np.uint8], height: int, width: int, gray: bool
) -> NDArray[np.uint8]:
    """The frame after a JPEG round trip (most of the time), colour conversion and a resize."""
    if rng.random() < 0.7:
        quality = int(rng.integers(60, 96))
        ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        image_bgr = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY) if gray else image_bgr[:, :, ::-1]
    interpolation = _INTERPOLATIONS[int(rng.integers(len(_INTERPOLATIONS)))]
    return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=interpolation))


def generate(
    seed: int,
    count: int,
    height: int,
    width: int,
    *,
    gray: bool,
    classes: tuple[str, ...] = DEFECTS,
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """`count` parts, the classes balanced and shuffled, as the model will see them.

    Returns images (count, height, width) for gray, else (count, height, width, 3) RGB, and
    labels (indices in DEFECTS).
    """
    rng = np.random.default_rng(seed)
    codes = np.array([DEFECTS.index(name) for name in classes], np.int64)
    labels = rng.permutation(codes[np.arange(count) % len(codes)])
    shape = (count, height, width) if gray else (count, height, width, 3)
    images = np.empty(shape, np.uint8)
    for index, label in enumerate(labels):
        part = make_part(rng, DEFECTS[label])
        images[index] = camera_view(rng, part, height, width, gray)
    return images, labels


def write_onnx(proto: onnx.ModelProto, path: Path, metadata: dict[str, str]) -> None:
    """Save an exported model as one file with `metadata` as its metadata_props.

    The exporter's annotations (module paths, FX node dumps) are dropped: they double the file
    and say nothing the agent needs.
    """
    graph = proto.graph
    for item in (*graph.node, *graph.value_info, *graph.input, *graph.output):
        del item.metadata_props[:]
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "shopfloor-agent tools"
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path)
