"""`shopfloor model info FILE`: what the agent makes of a model file, and why.

Shows the inputs and outputs, the recognised family, the classes, the pre-processing, the
threshold and the NG classes, each with where it came from (the model's metadata, the sidecar
YAML, anomalib's metadata.json, the family's default, or inferred from the graph's shapes),
and the time of one run on a blank image.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from inference.session import FAMILIES, ModelError, sidecar_path
from inference.vision.adapters import VisionModel, load_vision_model

__all__ = ["model_info", "model_info_command"]

EXIT_OK = 0
EXIT_MODEL = 2

# Runs timed on a blank image after one warm-up run.
_TIMED_RUNS = 5


def model_info(path: Path, *, threads: int | None = 1) -> dict[str, Any]:
    """What the agent makes of a model file, as plain JSON-ready values.

    Raises UnknownModelLayout / ModelError like `load_vision_model`.
    """
    model = load_vision_model(path, threads=threads)
    description = model.description
    session = model.session
    inputs = [
        {
            "name": description.input_name,
            "shape": list(description.input_shape),
            "type": description.input_type,
        }
    ]
    outputs = [
        {"name": name, "shape": list(shape), "type": str(output.type)}
        for (name, shape), output in zip(description.outputs, session.get_outputs(), strict=True)
    ]
    height, width = description.imgsz
    info: dict[str, Any] = {
        "path": str(path),
        "name": description.name,
        "version": description.version,
        "task": description.task,
        "family": description.family,
        "family_description": FAMILIES[description.family],
        "inputs": inputs,
        "outputs": outputs,
        "classes": {str(k): v for k, v in sorted(description.names.items())},
        "ng_classes": list(description.ng_classes),
        "threshold": description.threshold,
        "output": description.output,
        "preprocessing": {
            "color": description.color,
            "imgsz": [height, width],
            "resize": description.resize,
            "pad_value": description.pad_value if description.resize == "letterbox" else None,
            "scale": description.scale,
            "mean": list(description.mean),
            "std": list(description.std),
        },
        "origin": dict(description.origin),
        "sidecar": str(sidecar_path(path)) if sidecar_path(path).is_file() else None,
    }
    if description.normalization is not None:
        norm = description.normalization
        info["normalization"] = {
            "image_threshold": norm.image_threshold,
            "pred_scores_min": norm.score_min,
            "pred_scores_max": norm.score_max,
            "pixel_threshold": norm.pixel_threshold,
            "anomaly_maps_min": norm.map_min,
            "anomaly_maps_max": norm.map_max,
        }
    info["check_run_ms"] = round(_time_blank_runs(model), 3)
    info["threads"] = threads
    return info


def _time_blank_runs(model: VisionModel) -> float:
    """The median milliseconds of `infer` on a blank crop the size of the model's input."""
    import numpy as np

    height, width = model.description.imgsz
    blank = np.zeros((height, width, 3), dtype=np.uint8)
    model.infer(blank)
    times = []
    for _ in range(_TIMED_RUNS):
        started = time.perf_counter()
        model.infer(blank)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def model_info_command(path: Path, *, as_json: bool) -> int:
    """Print what the agent makes of a model; 0, or 2 when the model cannot be used."""
    try:
        info = model_info(path)
    except ModelError as exc:  # UnknownModelLayout included: its message lists the outputs
        print(exc, file=sys.stderr)
        return EXIT_MODEL
    if as_json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    _print(info)
    return EXIT_OK


def _print(info: dict[str, Any]) -> None:
    console = Console(highlight=False, soft_wrap=True)
    version = f" {info['version']}" if info["version"] else ""
    console.print(f"[bold]{info['name']}{version}[/bold]  {info['path']}")
    console.print(f"Family: [bold]{info['family']}[/bold] ({info['family_description']}).")
    if info["sidecar"]:
        console.print(f"Sidecar: {info['sidecar']}")
    tensors = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for column in ("", "name", "shape", "type"):
        tensors.add_column(column)
    for kind in ("inputs", "outputs"):
        for index, tensor in enumerate(info[kind]):
            tensors.add_row(
                kind[:-1] if index == 0 else "",
                tensor["name"],
                _shape_text(tensor["shape"]),
                tensor["type"].removeprefix("tensor(").removesuffix(")"),
            )
    console.print()
    console.print(tensors)
    console.print()
    origin: dict[str, str] = info["origin"]
    pre = info["preprocessing"]
    values = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    values.add_column("setting")
    values.add_column("value")
    values.add_column("from")

    def row(label: str, text: str, *keys: str) -> None:
        sources = sorted({_origin_text(origin.get(key, "default")) for key in keys})
        values.add_row(label, text, ", ".join(sources))

    row("task", str(info["task"]), "task")
    classes = info["classes"]
    row("classes", ", ".join(f"{k} {v}" for k, v in classes.items()) or "(none)", "names")
    if info["family"] in ("anomalib_v1", "anomalib_v2"):
        ng_text = "anomaly score at or above the threshold"
    elif info["ng_classes"]:
        ng_text = ", ".join(info["ng_classes"])
    else:
        ng_text = "every class"
    row("NG classes", ng_text, "ng_classes")
    row("threshold", f"{info['threshold']:g}{_threshold_meaning(info['family'])}", "threshold")
    if info["family"] == "classifier":
        output = info["output"] or "either (softmax unless the values already sum to 1)"
        row("output", output, "output")
    row("colour", pre["color"], "color")
    row("size", f"{pre['imgsz'][1]} x {pre['imgsz'][0]} (width x height)", "imgsz")
    resize = pre["resize"]
    if resize == "letterbox":
        row("resize", f"letterbox, padded with {pre['pad_value']}", "resize", "pad_value")
    else:
        row("resize", resize, "resize")
    row("scale", _scale_text(pre["scale"]), "scale")
    row("mean", _numbers(pre["mean"]), "mean")
    row("std", _numbers(pre["std"]), "std")
    normalization = info.get("normalization")
    if normalization:
        row(
            "normalisation",
            f"image threshold {normalization['image_threshold']:g}, scores "
            f"{normalization['pred_scores_min']:g}..{normalization['pred_scores_max']:g}; "
            f"pixel threshold {normalization['pixel_threshold']:g}, maps "
            f"{normalization['anomaly_maps_min']:g}..{normalization['anomaly_maps_max']:g}",
            "normalization",
        )
    console.print(values)
    console.print()
    console.print(
        f"One run on a blank image: {info['check_run_ms']:.2f} ms (median of {_TIMED_RUNS}, "
        f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}, pre- and "
        "post-processing included)."
    )


def _threshold_meaning(family: str) -> str:
    return {
        "classifier": " (NG when P(NG classes) reaches it)",
        "yolo_raw": " (minimum box confidence)",
        "yolo_e2e": " (minimum box confidence)",
        "anomalib_v1": " (normalised anomaly score)",
        "anomalib_v2": " (normalised anomaly score)",
    }[family]


def _origin_text(origin: str) -> str:
    return {
        "metadata": "model metadata",
        "sidecar": "sidecar",
        "default": "family default",
        "inferred": "inferred from the graph",
        "metadata.json": "metadata.json",
        "config": "configuration",
    }.get(origin, origin)


def _scale_text(scale: float) -> str:
    fraction = Fraction(scale).limit_denominator(65535)
    if fraction.numerator == 1 and abs(float(fraction) - scale) < 1e-12:
        return f"1/{fraction.denominator}"
    return f"{scale:g}"


def _numbers(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _shape_text(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
