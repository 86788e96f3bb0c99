"""Vision models of every family behind one call: `VisionModel.infer(crop) -> ModelOutput`.

The family is recognised when the model is loaded (see `inference.session`); its adapter
turns the raw outputs into a verdict: NG or not, the score compared with the threshold, the
class, boxes in frame pixels and an anomaly map the size of the crop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.session import (
    ONNXRUNTIME_ERRORS,
    ModelDescription,
    ModelError,
    describe_model,
    make_session,
)
from inference.vision.preprocess import Placement, prepare

__all__ = ["Box", "ModelOutput", "Timings", "VisionModel", "load_vision_model"]

log = logging.getLogger(__name__)

# Overlapping boxes of one class above this IoU are one object (Ultralytics' default).
NMS_IOU = 0.45
# Boxes kept after NMS, and candidates fed to it at most (a noisy raw output can have
# thousands above a low threshold; NMS time grows with their square).
MAX_BOXES = 300
MAX_NMS_CANDIDATES = 30000


@dataclass(frozen=True, slots=True)
class Box:
    """A detected object in FRAME pixels (x2/y2 exclusive edges, as floats)."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    class_name: str


@dataclass(slots=True)
class ModelOutput:
    """A model's verdict on one crop.

    `score` is the number compared with the threshold: P(NG classes) for a classifier, the
    best NG box's confidence for a detector (0.0 if none), the normalised anomaly score.
    `class_id` is -1 when no class applies (no NG box, an anomaly model).
    `anomaly_map` is float32 0..1 sized like the crop (h, w).
    """

    family: str
    ng: bool
    score: float
    class_id: int
    class_name: str | None
    boxes: list[Box]
    anomaly_map: npt.NDArray[np.float32] | None
    probabilities: dict[str, float] | None


@dataclass(frozen=True, slots=True)
class Timings:
    """Milliseconds spent in each step of one inference."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float


Outputs = list[npt.NDArray[Any]]


class VisionModel:
    """A loaded vision model. `infer` may be called from one worker thread at a time per
    model (onnxruntime releases the GIL while it runs)."""

    def __init__(self, session: Any, description: ModelDescription) -> None:
        self.session = session
        self.description = description
        self.family = description.family
        self.name = description.name
        self.version = description.version
        names = [name for name, _ in description.outputs]
        self._primary = names.index(description.primary_output)
        self._output_index = {name: index for index, name in enumerate(names)}
        self._float16 = description.input_type == "tensor(float16)"
        by_name = {name: class_id for class_id, name in description.names.items()}
        # None: every class is NG (a detector without ng_classes).
        self._ng_ids: frozenset[int] | None = (
            frozenset(by_name.get(n, _int_or(n)) for n in description.ng_classes)
            if description.ng_classes
            else None
        )
        interpreters: dict[str, Callable[[Outputs, Placement, tuple[int, int]], ModelOutput]] = {
            "classifier": self._classify,
            "yolo_raw": self._detect_raw,
            "yolo_e2e": self._detect_end_to_end,
            "anomalib_v2": self._anomaly_v2,
            "anomalib_v1": self._anomaly_v1,
        }
        self._interpret = interpreters[description.family]

    def __repr__(self) -> str:
        return f"VisionModel({self.description.path}, {self.family})"

    def infer(
        self, crop_bgr: npt.NDArray[np.uint8], roi_origin: tuple[int, int] = (0, 0)
    ) -> tuple[ModelOutput, Timings]:
        """The verdict on a crop of a frame whose top-left corner is `roi_origin`."""
        started = time.perf_counter()
        tensor, placement = self.prepare(crop_bgr, roi_origin)
        prepared = time.perf_counter()
        outputs = self.run(tensor)
        ran = time.perf_counter()
        result = self.interpret(outputs, placement, crop_bgr.shape)
        finished = time.perf_counter()
        return result, Timings(
            (prepared - started) * 1000, (ran - prepared) * 1000, (finished - ran) * 1000
        )

    def prepare(
        self, crop_bgr: npt.NDArray[np.uint8], roi_origin: tuple[int, int] = (0, 0)
    ) -> tuple[npt.NDArray[np.float32], Placement]:
        """The input tensor for a crop, and where its pixels went."""
        return prepare(crop_bgr, self.description, roi_origin)

    def run(self, tensor: npt.NDArray[np.float32]) -> Outputs:
        """One `session.run` on a prepared tensor: the raw outputs, in the model's order."""
        feed = tensor.astype(np.float16) if self._float16 else tensor
        try:
            outputs: Outputs = self.session.run(None, {self.description.input_name: feed})
        except ONNXRUNTIME_ERRORS as exc:
            raise ModelError(
                f"Model {self.description.path} failed to run in onnxruntime: {exc}"
            ) from exc
        for output in outputs:
            # A NaN would compare below every threshold and pass a part nobody inspected
            # (fp16 overflow, a broken quantisation): refuse the run instead.
            if output.dtype.kind == "f" and not np.isfinite(output).all():
                raise ModelError(
                    f"Model {self.description.path} produced values that are not finite "
                    "(NaN or infinity); the part is reported as an error, not judged"
                )
        return outputs

    def interpret(
        self, outputs: Outputs, placement: Placement, crop_shape: Sequence[int]
    ) -> ModelOutput:
        """The verdict from raw outputs; `crop_shape` is the crop's (height, width, ...)."""
        return self._interpret(outputs, placement, (int(crop_shape[0]), int(crop_shape[1])))

    def warm_up(self) -> None:
        """Run once on a blank input: the first run allocates, and should not be a part's."""
        height, width = self.description.imgsz
        blank = np.zeros((height, width, 3), dtype=np.uint8)
        self.infer(blank)

    # -- classifier --------------------------------------------------------------------------

    def _classify(
        self, outputs: Outputs, placement: Placement, crop_size: tuple[int, int]
    ) -> ModelOutput:
        row = np.asarray(outputs[self._primary], dtype=np.float64).reshape(
            outputs[self._primary].shape[0], -1
        )[0]
        kind = self.description.output
        if row.size == 1:
            value = float(row[0])
            if kind == "logits" or (kind is None and not 0.0 <= value <= 1.0):
                value = 1.0 / (1.0 + np.exp(-value))
            probabilities = np.array([1.0 - value, value])
        elif kind == "logits" or (kind is None and not _sums_to_one(row)):
            exponentials = np.exp(row - row.max())
            probabilities = exponentials / exponentials.sum()
        else:
            probabilities = row
        ng_ids = self._ng_ids or frozenset()
        score = float(sum(probabilities[i] for i in ng_ids if i < probabilities.size))
        ng = score >= self.description.threshold
        candidates = [i for i in ng_ids if i < probabilities.size] if ng else []
        if candidates:
            class_id = max(candidates, key=lambda i: probabilities[i])
        else:
            class_id = int(np.argmax(probabilities))
        description = self.description
        return ModelOutput(
            family=self.family,
            ng=ng,
            score=score,
            class_id=int(class_id),
            class_name=description.class_name(int(class_id)),
            boxes=[],
            anomaly_map=None,
            probabilities={
                description.class_name(i): float(p) for i, p in enumerate(probabilities.tolist())
            },
        )

    # -- detectors ---------------------------------------------------------------------------

    def _detect_raw(
        self, outputs: Outputs, placement: Placement, crop_size: tuple[int, int]
    ) -> ModelOutput:
        raw = outputs[self._primary]
        predictions = np.asarray(raw[0] if raw.ndim == 3 else raw, dtype=np.float32).T
        scores = predictions[:, 4:]
        if scores.shape[1] == 0:
            return self._detections([], placement, crop_size)
        class_ids = scores.argmax(axis=1)
        confidences = scores[np.arange(len(scores)), class_ids]
        keep = np.flatnonzero(confidences >= self.description.threshold)
        if keep.size > MAX_NMS_CANDIDATES:
            keep = keep[np.argsort(-confidences[keep])[:MAX_NMS_CANDIDATES]]
        if keep.size == 0:
            return self._detections([], placement, crop_size)
        centre = predictions[keep, :4].astype(np.float64)
        corners = np.column_stack(
            (centre[:, 0] - centre[:, 2] / 2, centre[:, 1] - centre[:, 3] / 2, centre[:, 2:4])
        )
        kept_scores = confidences[keep].astype(float).tolist()
        kept_classes = class_ids[keep].astype(int).tolist()
        nms: Any = cv2.dnn
        # Batched: boxes of different classes never suppress each other (a scratch on a
        # detected part stays), as in Ultralytics' per-class NMS.
        chosen = nms.NMSBoxesBatched(
            corners.tolist(),
            kept_scores,
            kept_classes,
            float(self.description.threshold),
            NMS_IOU,
        )
        found = []
        for index in np.asarray(chosen, dtype=int).reshape(-1)[:MAX_BOXES].tolist():
            x, y, w, h = corners[index].tolist()
            found.append((x, y, x + w, y + h, kept_scores[index], kept_classes[index]))
        return self._detections(found, placement, crop_size)

    def _detect_end_to_end(
        self, outputs: Outputs, placement: Placement, crop_size: tuple[int, int]
    ) -> ModelOutput:
        raw = outputs[self._primary]
        rows = np.asarray(raw[0] if raw.ndim == 3 else raw, dtype=np.float64)
        rows = rows[rows[:, 4] >= self.description.threshold]
        found = [
            (x1, y1, x2, y2, confidence, round(class_id))
            for x1, y1, x2, y2, confidence, class_id in rows[:MAX_BOXES].tolist()
        ]
        return self._detections(found, placement, crop_size)

    def _detections(
        self,
        found: list[tuple[float, float, float, float, float, int]],
        placement: Placement,
        crop_size: tuple[int, int],
    ) -> ModelOutput:
        """Boxes in input pixels -> frame pixels (clipped to the crop), and the verdict."""
        crop_height, crop_width = crop_size
        left, top = placement.roi_x, placement.roi_y
        right, bottom = left + crop_width, top + crop_height
        boxes = []
        for x1, y1, x2, y2, confidence, class_id in found:
            fx1, fy1 = placement.to_frame(x1, y1)
            fx2, fy2 = placement.to_frame(x2, y2)
            boxes.append(
                Box(
                    x1=min(max(fx1, left), right),
                    y1=min(max(fy1, top), bottom),
                    x2=min(max(fx2, left), right),
                    y2=min(max(fy2, top), bottom),
                    score=float(confidence),
                    class_id=int(class_id),
                    class_name=self.description.class_name(int(class_id)),
                )
            )
        boxes.sort(key=lambda box: box.score, reverse=True)
        ng_boxes = [b for b in boxes if self._ng_ids is None or b.class_id in self._ng_ids]
        best = ng_boxes[0] if ng_boxes else None
        return ModelOutput(
            family=self.family,
            ng=best is not None,
            score=best.score if best else 0.0,
            class_id=best.class_id if best else -1,
            class_name=best.class_name if best else None,
            boxes=boxes,
            anomaly_map=None,
            probabilities=None,
        )

    # -- anomaly models ----------------------------------------------------------------------

    def _anomaly_v2(
        self, outputs: Outputs, placement: Placement, crop_size: tuple[int, int]
    ) -> ModelOutput:
        score_at = self._output_index.get("pred_score")
        map_at = self._output_index.get("anomaly_map")
        anomaly_map = None
        if map_at is not None:
            anomaly_map = self._map_to_crop(_first_map(outputs[map_at]), placement, crop_size)
        if score_at is not None:
            score = float(np.asarray(outputs[score_at], dtype=np.float64).reshape(-1)[0])
        else:
            score = float(anomaly_map.max()) if anomaly_map is not None else 0.0
        if anomaly_map is not None:
            np.clip(anomaly_map, 0.0, 1.0, out=anomaly_map)
        return self._anomaly(min(1.0, max(0.0, score)), anomaly_map)

    def _anomaly_v1(
        self, outputs: Outputs, placement: Placement, crop_size: tuple[int, int]
    ) -> ModelOutput:
        normalization = self.description.normalization
        assert normalization is not None  # describe_model refuses a v1 model without it
        raw = np.asarray(outputs[self._primary], dtype=np.float32)
        anomaly_map = None
        if raw.ndim >= 3:
            raw_map = _first_map(raw)
            raw_score = float(raw_map.max())
            factor, offset = normalization.map_factors()
            normalised = raw_map * np.float32(factor) + np.float32(offset)
            anomaly_map = self._map_to_crop(normalised, placement, crop_size)
            np.clip(anomaly_map, 0.0, 1.0, out=anomaly_map)
        else:
            raw_score = float(raw.reshape(-1)[0])
        return self._anomaly(normalization.score(raw_score), anomaly_map)

    def _anomaly(self, score: float, anomaly_map: npt.NDArray[np.float32] | None) -> ModelOutput:
        ng = score >= self.description.threshold
        return ModelOutput(
            family=self.family,
            ng=ng,
            score=score,
            class_id=-1,
            class_name="anomaly" if ng else None,
            boxes=[],
            anomaly_map=anomaly_map,
            probabilities=None,
        )

    def _map_to_crop(
        self,
        model_map: npt.NDArray[np.float32],
        placement: Placement,
        crop_size: tuple[int, int],
    ) -> npt.NDArray[np.float32]:
        """A map at model resolution, cut to the crop's part of the input and sized like it."""
        crop_height, crop_width = crop_size
        input_height, input_width = self.description.imgsz
        map_height, map_width = model_map.shape
        # The crop's rectangle in input pixels (all of it unless letterboxed), in map pixels.
        to_map_x, to_map_y = map_width / input_width, map_height / input_height
        x0 = placement.pad_x * to_map_x
        y0 = placement.pad_y * to_map_y
        x1 = (placement.pad_x + crop_width * placement.scale_x) * to_map_x
        y1 = (placement.pad_y + crop_height * placement.scale_y) * to_map_y
        left, top = round(x0), round(y0)
        right, bottom = max(left + 1, round(x1)), max(top + 1, round(y1))
        region = np.ascontiguousarray(model_map[top:bottom, left:right], dtype=np.float32)
        resized = cv2.resize(region, (crop_width, crop_height), interpolation=cv2.INTER_LINEAR)
        return np.asarray(resized, dtype=np.float32).reshape(crop_height, crop_width)


def _first_map(raw: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """The first image's map [h, w] of an output [N, 1, h, w], [N, h, w] or [h, w]."""
    array = np.asarray(raw, dtype=np.float32)
    while array.ndim > 2:
        array = array[0]
    return array


def _sums_to_one(row: npt.NDArray[np.float64]) -> bool:
    return bool(row.min() >= 0.0 and row.max() <= 1.0 and abs(row.sum() - 1.0) < 1e-3)


def _int_or(name: str) -> int:
    """A class given by number (a model without names): its id; else -1 (matches nothing)."""
    return int(name) if name.isdigit() else -1


def load_vision_model(
    path: Path,
    *,
    threads: int | None = None,
    threshold: float | None = None,
    ng_classes: Sequence[str] | None = None,
) -> VisionModel:
    """Load a vision model and recognise its family. `threshold` and `ng_classes` (from the
    station's configuration) override the model's metadata and sidecar.

    Raises UnknownModelLayout when the outputs fit no family, ModelError when the file or a
    described value cannot be used.
    """
    session = make_session(path, threads)
    description = describe_model(
        path,
        session,
        threshold=threshold,
        ng_classes=None if ng_classes is None else list(ng_classes),
    )
    model = VisionModel(session, description)
    height, width = description.imgsz
    log.info(
        "Loaded vision model %s%s from %s: %s, %dx%d %s, threshold %g.",
        description.name,
        f" {description.version}" if description.version else "",
        path,
        description.family,
        width,
        height,
        description.color,
        description.threshold,
    )
    return model
