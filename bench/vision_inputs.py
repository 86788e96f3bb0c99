"""What the station benchmark inspects: a ResNet-18-sized model, camera frames, and a collector of
the agent's inspection events.

- `resnet18_classifier`: the ResNet-18 architecture (conv 7x7/2, max pool, four stages of two
  basic blocks with 64/128/256/512 channels, global average pooling, a fully connected layer)
  built with onnx.helper, at 224x224, with seeded random weights: no weights can be downloaded
  here, and latency depends on the architecture alone. Batch normalisation is folded into the
  convolutions' biases, as an exported model's is after onnxruntime's graph optimisation. Two
  classes (ok, ng) instead of ImageNet's 1,000: the last layer is 0.01 % of the work.
- `washer_frames`: 1280x960 BGR JPEG frames of synthetic washers (drivers/simulate/parts.py),
  as a camera above a belt would take them.
- `EventCollector`: the agent's `.../events/inspection` messages as they reach the broker.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import paho.mqtt.client as mqtt
from onnx import TensorProto, helper

from bench.subscriber import subscribed_client
from drivers.simulate.parts import DEFECTS, make_part

__all__ = ["FRAME_SIZE", "EventCollector", "resnet18_classifier", "washer_frames"]

FRAME_SIZE = (1280, 960)  # width, height
# ResNet-18's stages: (output channels, stride of the first block).
_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


class _Graph:
    """Nodes and random initialisers of a convolutional network under construction."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{kind}{self._count}"

    def _weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        # He initialisation keeps activations finite through 18 layers (the scores must be
        # numbers for the adapter's softmax, whatever they say).
        values = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(
            np.sqrt(2.0 / fan_in)
        )
        self.initializers.append(helper.make_tensor(name, TensorProto.FLOAT, shape, values))
        return name

    def conv(
        self, source: str, channels_in: int, channels_out: int, kernel: int, stride: int
    ) -> str:
        """A convolution with bias (batch normalisation folded in), 'same' padding."""
        name = self._name("conv")
        weight = self._weight(
            f"{name}.w", (channels_out, channels_in, kernel, kernel), channels_in * kernel**2
        )
        bias = f"{name}.b"
        self.initializers.append(
            helper.make_tensor(bias, TensorProto.FLOAT, (channels_out,), [0.0] * channels_out)
        )
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [source, weight, bias],
                [name],
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        return name

    def op(self, kind: str, *inputs: str, **attributes: Any) -> str:
        name = self._name(kind.lower())
        self.nodes.append(helper.make_node(kind, list(inputs), [name], **attributes))
        return name

    def basic_block(self, source: str, channels_in: int, channels_out: int, stride: int) -> str:
        """Two 3x3 convolutions and the shortcut (a 1x1 convolution where the shape changes)."""
        first = self.op("Relu", self.conv(source, channels_in, channels_out, 3, stride))
        second = self.conv(first, channels_out, channels_out, 3, 1)
        shortcut = source
        if stride != 1 or channels_in != channels_out:
            shortcut = self.conv(source, channels_in, channels_out, 1, stride)
        return self.op("Relu", self.op("Add", second, shortcut))


def resnet18_classifier(path: Path, *, classes: int = 2, size: int = 224, seed: int = 18) -> Path:
    """Write a ResNet-18-architecture classifier with random weights to `path`: input
    `input` [1, 3, size, size] (RGB, ImageNet normalisation), output `logits` [1, classes],
    described in its metadata (task classify, names ok/ng, logits)."""
    graph = _Graph(seed)
    x = graph.conv("input", 3, 64, 7, 2)
    x = graph.op("Relu", x)
    x = graph.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = 64
    for width, stride in _STAGES:
        x = graph.basic_block(x, channels, width, stride)
        x = graph.basic_block(x, width, width, 1)
        channels = width
    x = graph.op("Flatten", graph.op("GlobalAveragePool", x), axis=1)
    weight = graph._weight("fc.w", (channels, classes), channels)
    graph.initializers.append(
        helper.make_tensor("fc.b", TensorProto.FLOAT, (classes,), [0.0] * classes)
    )
    graph.nodes.append(helper.make_node("Gemm", [x, weight, "fc.b"], ["logits"]))
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "resnet18_random",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    names = {0: "ok", **{index: f"ng{index}" for index in range(1, classes)}}
    if classes == 2:
        names[1] = "ng"
    metadata = {
        "name": "resnet18-random",
        "version": "random-weights",
        "task": "classify",
        "names": repr(names),
        "imgsz": json.dumps([size, size]),
        "output": "logits",
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def washer_frames(folder: Path, count: int, *, seed: int = 6, quality: int = 92) -> list[Path]:
    """`count` camera frames (FRAME_SIZE, BGR JPEG) of washers on a belt, one in four defective,
    written to `folder` in name order; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = FRAME_SIZE
    paths = []
    for index in range(count):
        defect = DEFECTS[index % len(DEFECTS)] if index % 4 == 3 else "ok"
        # Drawn at a third of the size and enlarged: a 960x960 washer costs ten times more to
        # draw, and the enlarged one is as much work for the station to decode and resize.
        part = cv2.resize(make_part(rng, defect, 320), (height, height))
        side = (width - height) // 2
        frame = cv2.copyMakeBorder(part, 0, 0, side, width - height - side, cv2.BORDER_REPLICATE)
        path = folder / f"frame{index:04d}.jpg"
        if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise RuntimeError(f"cannot write the frame {path}")
        paths.append(path)
    return paths


class EventCollector:
    """The `data` of every inspection event an agent publishes, as it reaches the broker."""

    def __init__(self, port: int, topic: str) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self.unreadable = 0
        self._client = subscribed_client(port, topic, "event collector", self._on_message)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def events(self) -> list[dict[str, Any]]:
        """Every inspection event's `data` received so far, in arrival order."""
        with self._lock:
            return list(self._events)

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            found = [event["data"] for event in json.loads(message.payload)["events"]]
        except (ValueError, KeyError, TypeError):
            self.unreadable += 1
            return
        with self._lock:
            self._events.extend(found)
