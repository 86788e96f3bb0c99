"""onnxruntime sessions, and what a model file says about itself.

Every session of the agent is made here (`make_session`): one intra-op thread per available
core unless told otherwise, sequential execution and, on a shared gateway, no thread spinning
(spinning burns about a second of idle CPU per run on small boxes).

A vision model is described (`describe_model`) by its ONNX `metadata_props`, overridden key by
key by an optional sidecar YAML beside it (`washer.onnx` -> `washer.yaml`), and for anomalib
1.x exports by the `metadata.json` that anomalib writes next to the model. The family (plain
classifier, Ultralytics YOLO raw or end-to-end, anomalib 2.x or 1.x) is recognised from the
outputs' names and shapes; what the file does not say comes from the family's defaults.
`ModelDescription.origin` remembers where each value came from, for `shopfloor model info`.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

__all__ = [
    "FAMILIES",
    "ONNXRUNTIME_ERRORS",
    "AnomalyNormalization",
    "Color",
    "Family",
    "ModelDescription",
    "ModelError",
    "OutputKind",
    "Resize",
    "Shape",
    "Task",
    "UnknownModelLayout",
    "describe_model",
    "make_session",
    "parse_metadata_value",
    "sidecar_path",
]

Family = Literal["classifier", "yolo_raw", "yolo_e2e", "anomalib_v2", "anomalib_v1"]
Task = Literal["classify", "detect", "anomaly"]
Color = Literal["RGB", "BGR", "GRAY"]
Resize = Literal["stretch", "letterbox"]
OutputKind = Literal["logits", "probabilities"]
Shape = tuple[int | str, ...]

FAMILIES: dict[str, str] = {
    "classifier": "plain classifier: one output [N, C] of logits or probabilities",
    "yolo_raw": "Ultralytics YOLO detector, raw: one output [N, 4+nc, A] (cx, cy, w, h, scores)",
    "yolo_e2e": "Ultralytics YOLO detector, end-to-end: one output [N, 300, 6] "
    "(x1, y1, x2, y2, conf, class)",
    "anomalib_v2": "anomalib 2.x: outputs pred_score and/or anomaly_map, already normalised",
    "anomalib_v1": "anomalib 1.x: one output `output` (anomaly map or score) normalised with "
    "the metadata.json beside the model",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The keys a sidecar may set. Ultralytics writes stride and batch too: accepted, not needed.
SIDECAR_KEYS = (
    "name",
    "version",
    "task",
    "names",
    "imgsz",
    "color",
    "scale",
    "mean",
    "std",
    "resize",
    "pad_value",
    "output",
    "threshold",
    "ng_classes",
    "description",
    "stride",
    "batch",
)
_DESCRIBED_KEYS = SIDECAR_KEYS[:14]

# Names of classifier classes that mean a good part (NG: every other class).
_GOOD_NAMES = frozenset({"ok", "good", "pass"})

# What onnxruntime raises when it cannot load or run a model: its own exception types, which
# do not share a base class below Exception (so `except RuntimeError` misses them).
_ORT_ERROR_NAMES = (
    "Fail",
    "InvalidArgument",
    "NoSuchFile",
    "NoModel",
    "EngineError",
    "RuntimeException",
    "InvalidProtobuf",
    "ModelLoaded",
    "NotImplemented",
    "InvalidGraph",
    "EPFail",
)
ONNXRUNTIME_ERRORS: tuple[type[Exception], ...] = (
    *(
        cast(type[Exception], getattr(ort_state, n))
        for n in _ORT_ERROR_NAMES
        if hasattr(ort_state, n)
    ),
    RuntimeError,
)
_LOAD_ERRORS: tuple[type[Exception], ...] = (*ONNXRUNTIME_ERRORS, OSError, ValueError)


class ModelError(Exception):
    """A model file cannot be used; the message names the file, what is wrong and what to do."""


class UnknownModelLayout(ModelError):
    """The model's outputs fit no family this agent understands."""


@dataclass(frozen=True, slots=True)
class AnomalyNormalization:
    """anomalib 1.x min-max normalisation, from the metadata.json written by its export.

    A raw value x becomes ((x - threshold) / (max - min)) + 0.5, clipped to 0..1, so the
    normalised threshold is 0.5.
    """

    image_threshold: float
    score_min: float
    score_max: float
    pixel_threshold: float
    map_min: float
    map_max: float

    def score(self, raw: float) -> float:
        """A raw image score, normalised."""
        return _min_max(raw, self.image_threshold, self.score_min, self.score_max)

    def map_factors(self) -> tuple[float, float]:
        """(factor, offset) with normalised map = raw * factor + offset (then clipped)."""
        span = self.map_max - self.map_min
        return 1.0 / span, 0.5 - self.pixel_threshold / span


def _min_max(value: float, threshold: float, low: float, high: float) -> float:
    return min(1.0, max(0.0, (value - threshold) / (high - low) + 0.5))


@dataclass(frozen=True)
class ModelDescription:
    """Everything the agent needs to feed a vision model and read its answer.

    `imgsz` is (height, width). Pixels go through x * scale, then (x - mean) / std, per channel
    in `color` order. For a detector an empty `ng_classes` means every class is NG. `origin`
    maps each described key to "metadata", "sidecar", "metadata.json", "default", "inferred"
    (from the graph's shapes) or "config" (given by the station's configuration).
    """

    path: Path
    name: str
    version: str | None
    task: Task | None
    family: Family
    names: dict[int, str]
    imgsz: tuple[int, int]
    color: Color
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: Resize
    pad_value: int
    output: OutputKind | None
    threshold: float
    ng_classes: tuple[str, ...]
    input_name: str
    input_shape: Shape
    outputs: tuple[tuple[str, Shape], ...]
    origin: dict[str, str]
    input_type: str = "tensor(float)"
    # The output the family's adapter reads first (the only one, except for anomalib 2.x).
    primary_output: str = ""
    normalization: AnomalyNormalization | None = None

    @property
    def channels(self) -> int:
        """Colour channels the model takes: 1 for GRAY, else 3."""
        return 1 if self.color == "GRAY" else 3

    def class_name(self, class_id: int) -> str:
        """The name of a class id (its number as text when the model names no such class)."""
        return self.names.get(class_id, str(class_id))


def make_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for a model file: `threads` intra-op threads (default: the
    cores this process may use), one inter-op thread, sequential execution, no spinning.

    Raises ModelError when the file is missing, unreadable or not a model onnxruntime can run.
    """
    if not path.is_file():
        if path.is_dir():
            raise ModelError(f"Model file {path} is a directory: name the .onnx file in it.")
        raise ModelError(f"Model file {path} does not exist.")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or _available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # onnxruntime's own warnings (an unused initializer...) would go to stderr, unformatted,
    # into the agent's journal; errors still come back as exceptions.
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except _LOAD_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"Model file {path} cannot be loaded by onnxruntime {ort.__version__} ({reason}): "
            "is it a complete ONNX file exported with an opset this onnxruntime supports?"
        ) from None


def _available_cores() -> int:
    # sched_getaffinity honours a container's CPU set; os.cpu_count() counts the host's.
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def sidecar_path(model_path: Path) -> Path:
    """Where the optional sidecar YAML of a model lives: beside it, .onnx replaced by .yaml."""
    return model_path.with_suffix(".yaml")


def parse_metadata_value(text: str) -> Any:
    """An ONNX metadata string as a value: JSON, else a Python literal (Ultralytics writes
    `names` as a dict literal; parsed with ast.literal_eval, never eval), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def describe_model(
    path: Path,
    session: ort.InferenceSession,
    *,
    threshold: float | None = None,
    ng_classes: tuple[str, ...] | list[str] | None = None,
) -> ModelDescription:
    """Describe a vision model from its session, its metadata and the files beside it.

    `threshold` and `ng_classes` (from the station's configuration) win over everything else.
    Raises UnknownModelLayout when the outputs fit no family, ModelError when a value (in the
    metadata, the sidecar or the arguments) is invalid or the input is not one image tensor.
    """
    return _Describer(path, session).describe(threshold, ng_classes)


class _Describer:
    """Collects the values from each source, recognises the family and applies defaults."""

    def __init__(self, path: Path, session: ort.InferenceSession) -> None:
        self.path = path
        self.session = session
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.raw_metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)

    def describe(
        self, threshold: float | None, ng_classes: tuple[str, ...] | list[str] | None
    ) -> ModelDescription:
        input_name, input_shape, input_type = self._input()
        outputs = tuple(
            (str(output.name), _shape(output.shape)) for output in self.session.get_outputs()
        )
        self._read_metadata()
        sidecar = sidecar_path(self.path)
        if sidecar.is_file():
            self._read_sidecar(sidecar)
        v1_metadata = _anomalib_v1_metadata(self.path, outputs)
        family, primary = _recognise(self.path, outputs, self._task_hint(), v1_metadata)
        if threshold is not None:
            self._set("threshold", threshold, "config", "the station's configuration")
        if ng_classes is not None:
            self._set("ng_classes", list(ng_classes), "config", "the station's configuration")
        return self._complete(
            family=family,
            primary=primary,
            input_name=input_name,
            input_shape=input_shape,
            input_type=input_type,
            outputs=outputs,
            v1_metadata=v1_metadata,
        )

    # -- sources -----------------------------------------------------------------------------

    def _input(self) -> tuple[str, Shape, str]:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            found = ", ".join(f"{i.name} {_shape_text(_shape(i.shape))}" for i in inputs)
            raise ModelError(
                f"Model {self.path} has {len(inputs)} inputs ({found}); a vision model takes one "
                "image tensor [N, C, H, W]."
            )
        shape = _shape(inputs[0].shape)
        if len(shape) != 4:
            raise ModelError(
                f"Model {self.path} takes {inputs[0].name} {_shape_text(shape)}; a vision model "
                "takes one image tensor [N, C, H, W]."
            )
        batch, channels = shape[0], shape[1]
        if isinstance(batch, int) and batch != 1:
            raise ModelError(
                f"Model {self.path} was exported for batches of {batch} images; the agent runs "
                "one image at a time: export it with batch 1 or a dynamic batch."
            )
        if isinstance(channels, int) and channels not in (1, 3):
            raise ModelError(
                f"Model {self.path} takes {channels} channels per pixel; the agent feeds "
                "1 (GRAY) or 3 (RGB/BGR)."
            )
        input_type = str(inputs[0].type)
        if input_type not in ("tensor(float)", "tensor(float16)"):
            raise ModelError(
                f"Model {self.path} takes {input_type} pixels; the agent feeds float32 or "
                "float16 tensors."
            )
        return str(inputs[0].name), shape, input_type

    def _read_metadata(self) -> None:
        source = f"the metadata of {self.path}"
        for key in _DESCRIBED_KEYS:
            if key not in self.raw_metadata:
                continue
            text = self.raw_metadata[key]
            if key == "task":
                # An Ultralytics task this agent does not run (segment, pose, obb) is a layout
                # question, answered by UnknownModelLayout with the outputs listed.
                value = text.strip().lower()
                if value not in get_args(Task):
                    self.values["task_unsupported"] = value
                    continue
            value = text if key in ("name", "version") else parse_metadata_value(text)
            self._set(key, value, "metadata", source)

    def _read_sidecar(self, sidecar: Path) -> None:
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

        try:
            text = sidecar.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"Sidecar {sidecar} cannot be read: {exc}.") from None
        yaml = YAML(typ="safe")
        yaml.allow_duplicate_keys = False
        try:
            data = yaml.load(text)
        except (YAMLError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
            raise ModelError(f"Sidecar {sidecar} is not valid YAML: {first}.") from None
        if data is None:
            return
        if not isinstance(data, dict):
            raise ModelError(
                f"Sidecar {sidecar} must be a mapping of keys to values (e.g. `threshold: 0.6`)."
            )
        for key, value in data.items():
            if key not in SIDECAR_KEYS:
                raise ModelError(
                    f"Sidecar {sidecar}: unknown key {key!r}; the keys understood are "
                    f"{', '.join(SIDECAR_KEYS)}."
                )
            if key in _DESCRIBED_KEYS:
                self._set(str(key), value, "sidecar", f"sidecar {sidecar}")

    def _set(self, key: str, value: Any, origin: str, source: str) -> None:
        try:
            self.values[key] = _VALIDATORS[key](value)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{source[0].upper()}{source[1:]}: key {key!r}: {exc}") from None
        self.origin[key] = origin
        if key == "task":
            self.values.pop("task_unsupported", None)

    def _task_hint(self) -> str | None:
        hint = self.values.get("task")
        return cast(str | None, hint) or cast(str | None, self.values.get("task_unsupported"))

    # -- defaults and checks -----------------------------------------------------------------

    def _source(self, key: str) -> str:
        """Where a value came from, as words for an error message."""
        return {
            "metadata": "the model's metadata",
            "sidecar": f"the sidecar {sidecar_path(self.path)}",
            "config": "the station's configuration",
            "metadata.json": "anomalib's metadata.json",
        }.get(self.origin.get(key, ""), "the defaults")

    def _default(self, key: str, value: Any, origin: str = "default") -> None:
        if key not in self.values:
            self.values[key] = value
            self.origin[key] = origin

    def _complete(
        self,
        *,
        family: Family,
        primary: str,
        input_name: str,
        input_shape: Shape,
        input_type: str,
        outputs: tuple[tuple[str, Shape], ...],
        v1_metadata: tuple[Path, dict[str, Any]] | None,
    ) -> ModelDescription:
        ultralytics = _looks_ultralytics(self.raw_metadata)
        output_shape = dict(outputs)[primary]
        self._default("name", self.path.stem)
        self._default("version", None)
        self._default("task", _FAMILY_TASK[family], "inferred")
        self._complete_color(input_shape)
        gray = self.values["color"] == "GRAY"
        mean: tuple[float, ...] = (0.0,)
        std: tuple[float, ...] = (1.0,)
        if family in ("classifier", "anomalib_v1") and not (ultralytics or gray):
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        normalization = None
        if family == "anomalib_v1" and v1_metadata is not None:
            normalization = self._v1_normalization(*v1_metadata)
            found = _find_mean_std(v1_metadata[1].get("transform"))
            if found is not None and "mean" not in self.values and "std" not in self.values:
                self._set("mean", found[0], "metadata.json", str(v1_metadata[0]))
                self._set("std", found[1], "metadata.json", str(v1_metadata[0]))
        self._default("scale", 1 / 255)
        self._default("mean", mean)
        self._default("std", std)
        yolo = family in ("yolo_raw", "yolo_e2e")
        self._default("resize", "letterbox" if yolo else "stretch")
        self._default("pad_value", 114)
        self._default("threshold", 0.25 if yolo else 0.5)
        if family == "classifier":
            self._default("output", "probabilities" if ultralytics else None)
        else:
            self._default("output", None)
        self._complete_imgsz(input_shape)
        self._complete_names(family, output_shape)
        self._complete_ng_classes(family)
        self._check_channels(input_shape)
        values = self.values
        return ModelDescription(
            path=self.path,
            name=str(values["name"]),
            version=values["version"],
            task=values["task"],
            family=family,
            names=values["names"],
            imgsz=values["imgsz"],
            color=values["color"],
            scale=values["scale"],
            mean=values["mean"],
            std=values["std"],
            resize=values["resize"],
            pad_value=values["pad_value"],
            output=values["output"],
            threshold=values["threshold"],
            ng_classes=values["ng_classes"],
            input_name=input_name,
            input_shape=input_shape,
            outputs=outputs,
            origin=dict(self.origin),
            input_type=input_type,
            primary_output=primary,
            normalization=normalization,
        )

    def _complete_color(self, input_shape: Shape) -> None:
        channels = input_shape[1]
        if channels == 1:
            self._default("color", "GRAY", "inferred")
        else:
            self._default("color", "RGB")

    def _check_channels(self, input_shape: Shape) -> None:
        channels = input_shape[1]
        color = self.values["color"]
        wanted = 1 if color == "GRAY" else 3
        if isinstance(channels, int) and channels != wanted:
            raise ModelError(
                f"Model {self.path} takes {channels} channel(s) but its color is {color} "
                f"(from {self._source('color')}): set color to "
                f"{'GRAY' if channels == 1 else 'RGB or BGR'} in the sidecar "
                f"{sidecar_path(self.path).name}."
            )
        for key in ("mean", "std"):
            if len(self.values[key]) not in (1, wanted):
                raise ModelError(
                    f"Model {self.path}: {key} has {len(self.values[key])} values (from "
                    f"{self._source(key)}) for {wanted} channel(s): give 1 or {wanted}."
                )

    def _complete_imgsz(self, input_shape: Shape) -> None:
        height, width = input_shape[2], input_shape[3]
        static = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        if "imgsz" in self.values:
            if static is not None and self.values["imgsz"] != static:
                raise ModelError(
                    f"Model {self.path}: imgsz {list(self.values['imgsz'])} (from "
                    f"{self._source('imgsz')}) differs from the input's fixed size "
                    f"{list(static)} (height, width): correct or remove imgsz."
                )
            return
        if static is None:
            raise ModelError(
                f"Model {self.path} takes images of any size: set imgsz: [height, width] in "
                f"the sidecar {sidecar_path(self.path).name} (the size it was trained at)."
            )
        self._default("imgsz", static, "inferred")

    def _complete_names(self, family: Family, output_shape: Shape) -> None:
        if family in ("anomalib_v1", "anomalib_v2"):
            self._default("names", {})
            return
        count: int | None = None
        if family == "classifier":
            width = output_shape[-1]
            if isinstance(width, int):
                count = 2 if width == 1 else width
        elif family == "yolo_raw" and isinstance(output_shape[1], int):
            count = output_shape[1] - 4
        names = self.values.get("names")
        if names is None:
            if count is None and family != "yolo_e2e":
                raise ModelError(
                    f"Model {self.path} does not say how many classes it has: set names in the "
                    f"sidecar {sidecar_path(self.path).name}."
                )
            if family == "classifier" and output_shape[-1] == 1:
                generated = {0: "ok", 1: "ng"}
            else:
                generated = {index: f"class{index}" for index in range(count or 0)}
            self._default("names", generated, "inferred")
            return
        if count is not None and len(names) != count:
            raise ModelError(
                f"Model {self.path}: names has {len(names)} classes (from "
                f"{self._source('names')}) but the output {_shape_text(output_shape)} has "
                f"{count}: correct names."
            )

    def _complete_ng_classes(self, family: Family) -> None:
        names: dict[int, str] = self.values["names"]
        if "ng_classes" in self.values:
            unknown = [n for n in self.values["ng_classes"] if n not in names.values()]
            if unknown and (names or family != "yolo_e2e"):
                raise ModelError(
                    f"Model {self.path}: ng_classes (from {self._source('ng_classes')}) names "
                    f"{', '.join(map(repr, unknown))}, which the model does not have; its "
                    f"classes are {', '.join(names.values()) or 'not named'}."
                )
            return
        if family == "classifier":
            good = [n for n in names.values() if n.lower() in _GOOD_NAMES]
            ordered = [names[i] for i in sorted(names)]
            ng = [n for n in ordered if n not in good] if good else ordered[1:]
            self._default("ng_classes", tuple(ng))
        else:
            # Detectors: every class is a defect; anomaly models have none.
            self._default("ng_classes", ())

    def _v1_normalization(self, source: Path, data: dict[str, Any]) -> AnomalyNormalization:
        def number(*keys: str) -> float | None:
            for key in keys:
                node: Any = data
                for part in key.split("/"):
                    node = node.get(part) if isinstance(node, dict) else None
                if isinstance(node, list) and len(node) == 1:
                    node = node[0]
                if isinstance(node, int | float) and not isinstance(node, bool):
                    return float(node)
            return None

        image_threshold = number("image_threshold")
        score_min = number("pred_scores.min", "pred_scores/min", "min")
        score_max = number("pred_scores.max", "pred_scores/max", "max")
        if image_threshold is None or score_min is None or score_max is None:
            raise ModelError(
                f"{source} lacks image_threshold or pred_scores min/max: anomalib 1.x models are "
                "normalised with them; copy the metadata.json its export wrote beside the model."
            )
        if score_max <= score_min:
            raise ModelError(f"{source}: pred_scores max must be above min.")
        pixel_threshold = number("pixel_threshold")
        map_min = number("anomaly_maps.min", "anomaly_maps/min")
        map_max = number("anomaly_maps.max", "anomaly_maps/max")
        if map_min is None or map_max is None or map_max <= map_min:
            map_min, map_max = score_min, score_max
        self.origin["normalization"] = "metadata.json"
        return AnomalyNormalization(
            image_threshold=image_threshold,
            score_min=score_min,
            score_max=score_max,
            pixel_threshold=image_threshold if pixel_threshold is None else pixel_threshold,
            map_min=map_min,
            map_max=map_max,
        )


_FAMILY_TASK: dict[Family, Task] = {
    "classifier": "classify",
    "yolo_raw": "detect",
    "yolo_e2e": "detect",
    "anomalib_v2": "anomaly",
    "anomalib_v1": "anomaly",
}


def _looks_ultralytics(metadata: dict[str, str]) -> bool:
    return "ultralytics" in metadata.get("author", "").lower() or (
        "stride" in metadata and "names" in metadata
    )


def _anomalib_v1_metadata(
    path: Path, outputs: tuple[tuple[str, Shape], ...]
) -> tuple[Path, dict[str, Any]] | None:
    """anomalib 1.x's metadata.json beside the model, if any: `<stem>.metadata.json`, or a
    shared `metadata.json` only for a model whose one output can be an anomaly score or map
    (a classifier's [N, C] output in a folder of several models must not be taken for one)."""
    candidates = [path.with_suffix(".metadata.json")]
    if len(outputs) == 1 and _anomaly_shaped(outputs[0][1]):
        candidates.append(path.parent / "metadata.json")
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"{candidate} cannot be read as JSON: {exc}.") from None
        if isinstance(data, dict) and "image_threshold" in data:
            return candidate, data
    return None


def _anomaly_shaped(shape: Shape) -> bool:
    """[N], [N, 1] (a score) or [N, 1, H, W] (a map); dynamic sizes count as possible."""
    if len(shape) == 1:
        return True
    if len(shape) in (2, 4):
        return not isinstance(shape[1], int) or shape[1] == 1
    return False


def _find_mean_std(node: Any, depth: int = 0) -> tuple[Any, Any] | None:
    """The first Normalize(mean, std) in anomalib's serialised transform, if any."""
    if depth > 8:
        return None
    if isinstance(node, dict):
        if "mean" in node and "std" in node:
            return node["mean"], node["std"]
        children: list[Any] = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_mean_std(child, depth + 1)
        if found is not None:
            return found
    return None


def _recognise(
    path: Path,
    outputs: tuple[tuple[str, Shape], ...],
    task: str | None,
    v1_metadata: tuple[Path, dict[str, Any]] | None,
) -> tuple[Family, str]:
    """The family of a model and the output its adapter reads, from the outputs (and the task
    when the metadata or the sidecar names one)."""
    names = [name for name, _ in outputs]
    single = outputs[0] if len(outputs) == 1 else None
    if task in (None, "anomaly") and ("pred_score" in names or "anomaly_map" in names):
        return "anomalib_v2", "pred_score" if "pred_score" in names else "anomaly_map"
    if single is not None and (task == "anomaly" or (task is None and v1_metadata)):
        if v1_metadata is None:
            raise ModelError(
                f"Model {path} looks like an anomalib 1.x export (one output, task anomaly) "
                "but no metadata.json with image_threshold lies beside it: copy the "
                "metadata.json its export wrote next to the model."
            )
        return "anomalib_v1", single[0]
    if task in (None, "classify"):
        candidates = [o for o in outputs if len(o[1]) == 2]
        if candidates and (single is not None or task == "classify"):
            return "classifier", candidates[0][0]
    if task in (None, "detect"):
        for name, shape in outputs if (single is not None or task == "detect") else ():
            if len(shape) != 3:
                continue
            channels, anchors = shape[1], shape[2]
            if anchors == 6:
                return "yolo_e2e", name
            # [N, 4+nc, A] has fewer rows than anchors; [N, A, 5+nc] (YOLOv5) is not supported.
            if not isinstance(channels, int) or (
                channels >= 5 and (not isinstance(anchors, int) or channels < anchors)
            ):
                return "yolo_raw", name
    raise UnknownModelLayout(_unknown_layout_message(path, outputs, task))


def _unknown_layout_message(
    path: Path, outputs: tuple[tuple[str, Shape], ...], task: str | None
) -> str:
    found = ", ".join(f"{name} {_shape_text(shape)}" for name, shape in outputs)
    understood = "; ".join(FAMILIES.values())
    told = f" with task {task!r}" if task else ""
    return (
        f"Model {path}{told} has outputs {found}, which fit no layout the agent understands. "
        f"Layouts understood: {understood}. When the shapes are ambiguous, a sidecar "
        f"{sidecar_path(path).name} beside the model with `task: classify`, `task: detect` or "
        "`task: anomaly` tells which family to use."
    )


def _shape(shape: Any) -> Shape:
    return tuple(d if isinstance(d, int) else (str(d) if d else "?") for d in shape)


def _shape_text(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# -- value validators (raise ValueError/TypeError with the problem as a sentence) -------------


def _text(value: Any) -> str:
    if isinstance(value, dict | list) or value is None:
        raise ValueError(f"expected text, got {value!r}.")
    return str(value)


def _choice(options: tuple[str, ...], upper: bool = False) -> Any:
    def check(value: Any) -> str:
        text = str(value).strip()
        text = text.upper() if upper else text.lower()
        if not isinstance(value, str) or text not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}.")
        return text

    return check


def _number(value: Any) -> float:
    if isinstance(value, str):
        # `scale: 1/255` reads naturally in YAML; it arrives as text.
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", value)
        if match:
            return _number(float(match[1])) / _number(float(match[2]))
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number.") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number.")
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number.")
    return float(value)


def _scale(value: Any) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError(f"{value!r} must be above 0 (e.g. 1/255 or 0.00392156862745098).")
    return number


def _threshold(value: Any) -> float:
    number = _number(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{value!r} must be between 0 and 1.")
    return number


def _channels_values(positive: bool) -> Any:
    def check(value: Any) -> tuple[float, ...]:
        items = value if isinstance(value, list | tuple) else [value]
        if len(items) not in (1, 3):
            raise ValueError(f"{value!r} must be one number or three (one per channel).")
        numbers = tuple(_number(item) for item in items)
        if positive and any(n <= 0 for n in numbers):
            raise ValueError(f"{value!r} must be above 0.")
        return numbers

    return check


def _imgsz(value: Any) -> tuple[int, int]:
    items = value if isinstance(value, list | tuple) else [value]
    if len(items) == 1:
        items = [items[0], items[0]]
    if len(items) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ValueError(f"{value!r} must be a size in pixels or [height, width].")
    height, width = int(items[0]), int(items[1])
    if not (0 < height <= 16384 and 0 < width <= 16384):
        raise ValueError(f"{value!r} must be between 1 and 16384 pixels.")
    return height, width


def _names(value: Any) -> dict[int, str]:
    if isinstance(value, list | tuple):
        pairs = list(enumerate(value))
    elif isinstance(value, dict):
        pairs = []
        for key, name in value.items():
            try:
                pairs.append((int(key), name))
            except (TypeError, ValueError):
                raise ValueError(f"class id {key!r} is not a number.") from None
    else:
        raise ValueError(f"{value!r} must be a list of names or a mapping {{0: ok, 1: ...}}.")
    names: dict[int, str] = {}
    for class_id, name in sorted(pairs):
        if class_id < 0 or not isinstance(name, str | int) or isinstance(name, bool):
            raise ValueError(f"{class_id}: {name!r} is not a class id and name.")
        names[class_id] = str(name)
    if len(set(names.values())) != len(names):
        raise ValueError("two classes have the same name.")
    return names


def _ng_classes(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(f"{value!r} must be a list of class names, e.g. [scratch, chip].")
    if not all(isinstance(i, str) for i in items):
        raise ValueError(f"{value!r} must be a list of class names, e.g. [scratch, chip].")
    return tuple(dict.fromkeys(items))


def _pad_value(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError(f"{value!r} must be a whole number between 0 and 255.")
    return value


def _version(value: Any) -> str | None:
    return None if value is None else _text(value)


_VALIDATORS: dict[str, Any] = {
    "name": _text,
    "version": _version,
    "task": _choice(get_args(Task)),
    "names": _names,
    "imgsz": _imgsz,
    "color": _choice(get_args(Color), upper=True),
    "scale": _scale,
    "mean": _channels_values(positive=False),
    "std": _channels_values(positive=True),
    "resize": _choice(get_args(Resize)),
    "pad_value": _pad_value,
    "output": _choice(get_args(OutputKind)),
    "threshold": _threshold,
    "ng_classes": _ng_classes,
}
