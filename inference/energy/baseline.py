"""Energy baseline: expected power from an ONNX regression, and a CUSUM on the residual.

`BaselineModel` loads a regression model (made by tools/train_energy_baseline.py, or any model
with the same metadata) through `inference.session.make_session` and reads its description
from the ONNX `metadata_props`: `task` "regress", `features` (a JSON list of {name, unit, min,
max}: the input columns in order, with their training ranges), `output` ({name, unit}; unit kW),
`residual_std_kw`, `r2` and `cv_rmse` (a fraction of the mean power), plus `name`, `version`
and optionally `interval_s`. `expected()` answers for one interval: GOOD inside the training
ranges; UNCERTAIN, with the out-of-range inputs named, outside them (a linear model extrapolates
without complaint, so the answer is still given) or when the model's own fit is below the
trust limits (R^2 >= 0.5, CV(RMSE) <= 30%, after ASHRAE Guideline 14); BAD when an input is
missing or not a finite number.

`Cusum` is a one-sided upper CUSUM on residual = actual - expected, in units of the model's
residual standard deviation: it looks for extra load (a compressed-air leak, a brake dragging),
not for a drop in consumption. Only GOOD residuals feed it; the others are counted. It raises an
anomaly once when the statistic reaches h, with the estimated onset and size of the shift, holds
the statistic at h while the anomaly lasts, and clears it once when the statistic falls back to
`clear_below` * h (the hysteresis), then starts again from 0. No I/O, no clock: time is the
caller's `ts_ms`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.model import Quality
from inference.session import ModelError, make_session

__all__ = [
    "MAX_CV_RMSE",
    "MIN_R2",
    "BaselineModel",
    "Cusum",
    "CusumChange",
    "Expectation",
    "Feature",
]

# A baseline is trusted when its fit is at least this good (ASHRAE Guideline 14, hourly data).
MIN_R2 = 0.5
MAX_CV_RMSE = 0.30


@dataclass(frozen=True, slots=True)
class Feature:
    """One input column of the model, with the range it was trained on."""

    name: str
    unit: str
    min: float
    max: float

    def describe(self, value: float) -> str:
        """'name VALUE UNIT outside the training range MIN..MAX' for a reason text."""
        return (
            f"{self.name} {value:g} {self.unit} outside the training range "
            f"{self.min:g}..{self.max:g}"
        )


@dataclass(frozen=True, slots=True)
class Expectation:
    """The expected power of one interval. `expected_kw` is None only when quality is BAD;
    `reason` says why the quality is not GOOD; `out_of_range` names the inputs outside the
    training range."""

    expected_kw: float | None
    quality: Quality
    reason: str | None = None
    out_of_range: tuple[str, ...] = ()


@dataclass(frozen=True)
class BaselineModel:
    """An expected-power regression and its description. Build it with `load`."""

    path: Path
    name: str
    version: str
    features: tuple[Feature, ...]
    output_name: str
    output_unit: str
    residual_std_kw: float
    r2: float
    cv_rmse: float
    interval_s: float | None
    session: Any  # onnxruntime.InferenceSession (untyped library)
    input_name: str

    @classmethod
    def load(cls, path: Path, threads: int = 1) -> BaselineModel:
        """Load a baseline model file. Raises ModelError (naming the file and the key) when the
        file cannot be loaded or its metadata is missing or invalid."""
        session = make_session(path, threads=threads)
        metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        reader = _MetadataReader(path, metadata)
        task = reader.text("task")
        if task != "regress":
            raise reader.error("task", f"is {task!r}, expected 'regress'")
        features = reader.features()
        output = reader.json_object("output")
        output_name, output_unit = output.get("name"), output.get("unit")
        if not isinstance(output_name, str) or not output_name:
            raise reader.error("output", "has no name")
        if output_unit != "kW":
            raise reader.error("output", f"unit is {output_unit!r}, expected 'kW'")
        residual_std = reader.number("residual_std_kw")
        if residual_std <= 0:
            raise reader.error("residual_std_kw", f"is {residual_std:g}, expected > 0")
        interval_s = reader.number("interval_s") if "interval_s" in metadata else None

        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            raise ModelError(
                f"Model file {path} must take one float32 input [N, {len(features)}]: it takes "
                + ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
                + "."
            )
        shape = list(inputs[0].shape)
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(features)):
            raise ModelError(
                f"Model file {path}: its input {inputs[0].name} has shape {shape}, but the "
                f"metadata lists {len(features)} features: expected [N, {len(features)}]."
            )
        if len(session.get_outputs()) != 1:
            raise ModelError(f"Model file {path} must have one output (expected power).")
        return cls(
            path=path,
            name=reader.text("name"),
            version=reader.text("version"),
            features=features,
            output_name=output_name,
            output_unit=output_unit,
            residual_std_kw=residual_std,
            r2=reader.number("r2"),
            cv_rmse=reader.number("cv_rmse"),
            interval_s=interval_s,
            session=session,
            input_name=str(inputs[0].name),
        )

    @property
    def trusted(self) -> bool:
        """Whether the model's fit meets the trust limits (R^2 >= 0.5, CV(RMSE) <= 30%)."""
        return self.r2 >= MIN_R2 and self.cv_rmse <= MAX_CV_RMSE

    def expected(self, features: Mapping[str, float]) -> Expectation:
        """The expected power for one interval's inputs, keyed by feature name (extra keys are
        ignored). Runs the model (microseconds for a linear one); call it off the event loop
        with the other onnxruntime work if the model is large."""
        values: list[float] = []
        bad: list[str] = []
        for feature in self.features:
            value = features.get(feature.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                bad.append(
                    f"{feature.name} missing"
                    if value is None
                    else f"{feature.name} is not a number ({value!r})"
                )
            elif not math.isfinite(value):
                bad.append(f"{feature.name} is {value}")
            else:
                values.append(float(value))
        if bad:
            return Expectation(None, Quality.BAD, "; ".join(bad))
        row = np.asarray([values], dtype=np.float32)
        expected_kw = float(self.session.run(None, {self.input_name: row})[0].reshape(-1)[0])
        # Compare what the model saw (float32) with the ranges (float32 values too).
        outside = [
            (feature, value)
            for feature, value in zip(self.features, row[0].tolist(), strict=True)
            if not feature.min <= value <= feature.max
        ]
        if outside:
            return Expectation(
                expected_kw,
                Quality.UNCERTAIN,
                "; ".join(feature.describe(value) for feature, value in outside),
                tuple(feature.name for feature, _ in outside),
            )
        if not self.trusted:
            return Expectation(
                expected_kw,
                Quality.UNCERTAIN,
                f"model fit below the trust limits (R^2 {self.r2:.3f}, CV(RMSE) "
                f"{100 * self.cv_rmse:.1f}%; needs R^2 >= {MIN_R2}, CV(RMSE) <= "
                f"{100 * MAX_CV_RMSE:.0f}%)",
            )
        return Expectation(expected_kw, Quality.GOOD)


class _MetadataReader:
    """Typed access to metadata_props, with ModelErrors that name the file and the key."""

    def __init__(self, path: Path, metadata: dict[str, str]) -> None:
        self.path = path
        self.metadata = metadata

    def error(self, key: str, problem: str) -> ModelError:
        return ModelError(
            f"Model file {self.path}: metadata_props key {key!r} {problem}; an energy baseline "
            "needs task, features, output, residual_std_kw, r2, cv_rmse, name and version "
            "(see tools/train_energy_baseline.py)."
        )

    def text(self, key: str) -> str:
        value = self.metadata.get(key)
        if value is None or not value.strip():
            raise self.error(key, "is missing")
        return value.strip()

    def number(self, key: str) -> float:
        text = self.text(key)
        try:
            value = float(text)
        except ValueError:
            raise self.error(key, f"is {text!r}, not a number") from None
        if not math.isfinite(value):
            raise self.error(key, f"is {text!r}, not a finite number")
        return value

    def json_value(self, key: str) -> Any:
        text = self.text(key)
        try:
            return json.loads(text)
        except ValueError:
            raise self.error(key, "is not valid JSON") from None

    def json_object(self, key: str) -> dict[str, Any]:
        value = self.json_value(key)
        if not isinstance(value, dict):
            raise self.error(key, "is not a JSON object")
        return value

    def features(self) -> tuple[Feature, ...]:
        value = self.json_value("features")
        if not isinstance(value, list) or not value:
            raise self.error("features", "is not a non-empty JSON list")
        features: list[Feature] = []
        for index, item in enumerate(value):
            where = f"entry {index}"
            if not isinstance(item, dict):
                raise self.error("features", f"{where} is not an object")
            name, unit = item.get("name"), item.get("unit")
            low, high = _number(item.get("min")), _number(item.get("max"))
            if not isinstance(name, str) or not name:
                raise self.error("features", f"{where} has no name")
            if not isinstance(unit, str):
                raise self.error("features", f"{where} ({name}) has no unit")
            if low is None or high is None or low > high:
                raise self.error(
                    "features",
                    f"{where} ({name}) needs finite numbers min <= max, got "
                    f"{item.get('min')!r}..{item.get('max')!r}",
                )
            features.append(Feature(name, unit, low, high))
        names = [feature.name for feature in features]
        if len(set(names)) != len(names):
            raise self.error("features", f"names a feature twice ({names})")
        return tuple(features)


def _number(value: object) -> float | None:
    """A JSON number as a float; None for anything else (bool, text, NaN, infinity)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True, slots=True)
class CusumChange:
    """An anomaly raised or cleared. `start_ms` is the estimated onset (the first interval of
    the run that reached h); `magnitude_kw` the estimated extra load (mean residual since the
    onset, at the moment it was raised); `statistic` is in residual standard deviations."""

    kind: Literal["raised", "cleared"]
    ts_ms: int
    start_ms: int
    magnitude_kw: float
    statistic: float


class Cusum:
    """One-sided upper CUSUM on residuals (kW): S = max(0, S + residual / std - k); an anomaly
    is raised when S >= h and cleared when S falls back to clear_below * h. k and h are in
    residual standard deviations.

    Defaults k = 0.5, h = 10: with Gaussian residuals at the stated std the in-control average
    run length is about 10^5 intervals (a false alarm every ~70 days of one-minute intervals;
    h = 5 would give one about every 900 intervals, more than one a day), and a shift of 2 std
    is found in about 7 intervals on average (measured figures for the demo model in
    tests/unit/test_energy_baseline.py).
    """

    def __init__(
        self, residual_std: float, k: float = 0.5, h: float = 10.0, clear_below: float = 0.5
    ) -> None:
        if not (math.isfinite(residual_std) and residual_std > 0):
            raise ValueError(f"residual_std must be a positive number, not {residual_std!r}")
        if not (k >= 0 and h > 0 and 0 <= clear_below < 1):
            raise ValueError(
                f"CUSUM needs k >= 0, h > 0 and 0 <= clear_below < 1 (got k={k}, h={h}, "
                f"clear_below={clear_below})"
            )
        self.residual_std = residual_std
        self.k = k
        self.h = h
        self.clear_below = clear_below
        self.statistic = 0.0
        self.active: CusumChange | None = None  # the raise, while the anomaly lasts
        self.counts: Counter[str] = Counter()  # fed, uncertain, bad, non_finite, out_of_order
        self._run_start_ms: int | None = None
        self._run_length = 0
        self._last_ts_ms: int | None = None

    def update(self, ts_ms: int, residual: float, quality: Quality) -> CusumChange | None:
        """Feed one interval's residual (actual - expected, kW). Returns the change when the
        anomaly is raised or cleared by this interval, else None. Residuals whose expectation
        is not GOOD, non-finite ones and out-of-order timestamps are counted, not fed."""
        if quality is not Quality.GOOD:
            self.counts[quality.value] += 1
            return None
        if not math.isfinite(residual):
            self.counts["non_finite"] += 1
            return None
        if self._last_ts_ms is not None and ts_ms <= self._last_ts_ms:
            self.counts["out_of_order"] += 1
            return None
        self._last_ts_ms = ts_ms
        self.counts["fed"] += 1
        statistic = float(self.statistic + residual / self.residual_std - self.k)
        if statistic <= 0:
            self.statistic, self._run_start_ms, self._run_length = 0.0, None, 0
        else:
            if self._run_start_ms is None:
                self._run_start_ms = ts_ms
            self._run_length += 1
            self.statistic = statistic

        if self.active is None:
            if self.statistic < self.h:
                return None
            assert self._run_start_ms is not None  # statistic > 0 implies a run
            magnitude = float(self.residual_std * (self.statistic / self._run_length + self.k))
            self.active = CusumChange(
                "raised", ts_ms, self._run_start_ms, magnitude, self.statistic
            )
            self.statistic = self.h
            return self.active
        # Raised: hold the statistic at h, so the clear comes soon after the fault ends.
        self.statistic = min(self.statistic, self.h)
        if self.statistic > self.clear_below * self.h:
            return None
        raised, self.active = self.active, None
        self.statistic, self._run_start_ms, self._run_length = 0.0, None, 0
        return CusumChange("cleared", ts_ms, raised.start_ms, raised.magnitude_kw, self.statistic)
