"""Train the demo's energy baseline and export inference/models/energy_baseline.onnx.

The baseline predicts a press line's expected electrical power (kW, mean over a one-minute
interval) from what the agent knows about that interval: the production rate (parts counted in
the interval per minute), the shares of the interval spent idle and producing (off is the rest;
a one-hot state is the special case of a whole interval in one state) and the ambient
temperature. The meter data are synthetic and deterministic by seed: a known linear power law
(`TRUTH`) plus Gaussian meter/process noise (`NOISE_KW`). A scikit-learn LinearRegression learns
it; skl2onnx exports it (a LinearRegressor node, under 1 KiB). The description the agent reads
(features with units and training ranges, output unit, residual standard deviation, fit figures)
goes into the model's metadata_props. The tool also writes
tests/unit/energy_baseline_expectations.json: input rows with scikit-learn's predictions, which
the runtime test compares with the shipped file through onnxruntime.

Development only (scikit-learn and skl2onnx are not agent dependencies). Usage, from the
repository root, in the training environment described in tools/README.md:

    python tools/train_energy_baseline.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import sklearn
from numpy.typing import NDArray
from sklearn.linear_model import LinearRegression

REPO = Path(__file__).resolve().parent.parent
VERSION = "1.0.0"
# The versions the shipped file was made with (printed, and checked unless --any-version).
PINNED = {"scikit-learn": "1.9.1", "skl2onnx": "1.20.0", "onnx": "1.23.2", "numpy": "2.4.6"}
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
INTERVAL_S = 60

# (name, unit, description): the model's input columns, in order.
FEATURES = (
    (
        "production_rate",
        "parts/min",
        "parts counted in the interval per minute (0 unless producing)",
    ),
    ("idle_share", "1", "share of the interval in state idle (0..1)"),
    ("producing_share", "1", "share of the interval in state producing (0..1)"),
    ("ambient_temperature", "degC", "hall temperature"),
)

# The synthetic press line: power = off + idle_share * idle + producing_share * producing
#   + per_part * production_rate + per_degc * (ambient - 20 degC) + noise.
TRUTH = {
    "off_kw": 4.0,  # controls, HMI, cabinet cooling
    "idle_kw": 11.5,  # hydraulic pump on standby, lubrication, feeder servos holding
    "producing_kw": 20.0,  # main drive running, press and transfer at speed
    "kw_per_part_per_min": 1.1,  # forming work and transfer per part
    "kw_per_degc": 0.15,  # oil and cabinet cooling above 20 degC
}
NOISE_KW = 1.0
# Interval kinds drawn: off, idle, producing, a mix of idle and producing (a transition).
KIND_PROBABILITIES = (0.20, 0.25, 0.45, 0.10)
RATE_RANGE = (6.0, 30.0)  # parts/min while producing
AMBIENT_RANGE = (8.0, 34.0)  # degC


def true_power(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """The synthetic press line's noise-free power (kW) for feature rows `x`."""
    rate, idle, producing, ambient = x.T
    return (
        TRUTH["off_kw"]
        + idle * TRUTH["idle_kw"]
        + producing * TRUTH["producing_kw"]
        + rate * TRUTH["kw_per_part_per_min"]
        + (ambient - 20.0) * TRUTH["kw_per_degc"]
    )


def generate(seed: int, count: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """`count` one-minute intervals: features (float32 values, held as float64) and power kW."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(len(KIND_PROBABILITIES), size=count, p=KIND_PROBABILITIES)
    split = rng.uniform(0.05, 0.95, count)
    producing = np.select([kind == 2, kind == 3], [1.0, split], 0.0)
    idle = np.select([kind == 1, kind == 3], [1.0, 1.0 - split], 0.0)
    rate = producing * rng.uniform(*RATE_RANGE, count)
    ambient = rng.uniform(*AMBIENT_RANGE, count)
    # The agent feeds float32: train on exactly the values the ONNX model will see.
    x = np.column_stack([rate, idle, producing, ambient]).astype(np.float32).astype(np.float64)
    power = true_power(x) + rng.normal(0.0, NOISE_KW, count)
    return x, power


def fit_figures(y: NDArray[np.float64], predicted: NDArray[np.float64]) -> dict[str, float]:
    """R^2, RMSE and CV(RMSE) (RMSE / mean, as a fraction) of predictions against truth."""
    residual = y - predicted
    rmse = float(np.sqrt(np.mean(residual**2)))
    r2 = 1.0 - float(np.sum(residual**2) / np.sum((y - y.mean()) ** 2))
    return {"r2": r2, "rmse_kw": rmse, "cv_rmse": rmse / float(y.mean())}


def train(seed: int, count: int) -> tuple[LinearRegression, NDArray[np.float64]]:
    """The fitted model and its training features (for the ranges)."""
    x, y = generate(seed, count)
    return LinearRegression().fit(x, y), x


def feature_ranges(x: NDArray[np.float64]) -> list[dict[str, object]]:
    """The metadata's feature list: name, unit, training min and max, description."""
    return [
        {
            "name": name,
            "unit": unit,
            "min": float(np.float32(x[:, index].min())),
            "max": float(np.float32(x[:, index].max())),
            "description": description,
        }
        for index, (name, unit, description) in enumerate(FEATURES)
    ]


def export(
    model: LinearRegression, path: Path, metadata: dict[str, str]
) -> None:  # pragma: no cover - needs skl2onnx
    """Write the ONNX file: input `features` [N, F] float32, output `expected_power` [N, 1]."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    proto = convert_sklearn(
        model,
        name="energy_baseline",
        initial_types=[("features", FloatTensorType([None, len(FEATURES)]))],
        final_types=[("expected_power", FloatTensorType([None, 1]))],
        target_opset=TARGET_OPSET,
    )
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "shopfloor-agent tools"
    proto.doc_string = ""
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path)


def expectation_rows(
    model: LinearRegression, x_holdout: NDArray[np.float64], ranges: list[dict[str, object]]
) -> list[dict[str, object]]:
    """About 20 rows for the runtime test: held-out intervals, the range corners, and two rows
    outside the training range (the model still answers; the agent marks them UNCERTAIN)."""
    low = [float(r["min"]) for r in ranges]  # type: ignore[arg-type]
    high = [float(r["max"]) for r in ranges]  # type: ignore[arg-type]
    extra = np.array(
        [
            [0.0, 0.0, 0.0, low[3]],  # off, coldest
            [0.0, 1.0, 0.0, high[3]],  # idle, hottest
            [high[0], 0.0, 1.0, 20.0],  # producing at the fastest rate
            [45.0, 0.0, 1.0, 20.0],  # rate above the training range
            [12.0, 0.0, 1.0, -5.0],  # ambient below the training range
        ],
        dtype=np.float32,
    ).astype(np.float64)
    rows = np.vstack([x_holdout[:15], extra])
    predicted = model.predict(rows)
    names = [name for name, _, _ in FEATURES]
    return [
        {"features": dict(zip(names, map(float, row), strict=True)), "expected_kw": float(p)}
        for row, p in zip(rows, predicted, strict=True)
    ]


def versions() -> dict[str, str]:
    """Versions of the training stack in use."""
    import onnx
    import skl2onnx

    return {
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-count", type=int, default=20_000)
    parser.add_argument("--holdout-count", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7, help="training data")
    parser.add_argument("--holdout-seed", type=int, default=1007)
    parser.add_argument("--any-version", action="store_true", help="do not insist on PINNED")
    parser.add_argument(
        "--output", type=Path, default=REPO / "inference" / "models" / "energy_baseline.onnx"
    )
    parser.add_argument(
        "--expectations",
        type=Path,
        default=REPO / "tests" / "unit" / "energy_baseline_expectations.json",
    )
    arguments = parser.parse_args()
    began = time.perf_counter()

    found = versions()
    print("versions: " + ", ".join(f"{name} {version}" for name, version in found.items()))
    if found != PINNED and not arguments.any_version:
        raise SystemExit(f"expected {PINNED} (pass --any-version to train anyway)")

    model, x_train = train(arguments.seed, arguments.train_count)
    x_holdout, y_holdout = generate(arguments.holdout_seed, arguments.holdout_count)
    print(
        "coefficients: "
        + ", ".join(
            f"{name} {coef:+.4f}" for (name, _, _), coef in zip(FEATURES, model.coef_, strict=True)
        )
        + f", intercept {model.intercept_:+.4f}"
    )
    figures = fit_figures(y_holdout, model.predict(x_holdout))
    print(
        f"held-out ({arguments.holdout_count} one-minute intervals, seed "
        f"{arguments.holdout_seed}): R^2 {figures['r2']:.4f}, RMSE {figures['rmse_kw']:.3f} kW, "
        f"CV(RMSE) {100 * figures['cv_rmse']:.2f}% (ASHRAE Guideline 14: R^2 >= 0.5 and "
        "CV(RMSE) <= 30% hourly)"
    )
    ranges = feature_ranges(x_train)
    metadata = {
        "name": "press-line-energy-baseline",
        "version": VERSION,
        "task": "regress",
        "features": json.dumps(ranges),
        "output": json.dumps({"name": "expected_power", "unit": "kW"}),
        "residual_std_kw": f"{figures['rmse_kw']:.6f}",
        "r2": f"{figures['r2']:.6f}",
        "cv_rmse": f"{figures['cv_rmse']:.6f}",
        "interval_s": str(INTERVAL_S),
        "description": (
            "Demo model: expected power of a simulated press line per one-minute interval, "
            f"trained by tools/train_energy_baseline.py (seed {arguments.seed}, "
            f"{arguments.train_count} intervals; figures on seed {arguments.holdout_seed}). "
            "cv_rmse is a fraction of the mean power."
        ),
    }
    export(model, arguments.output, metadata)

    import onnxruntime

    session = onnxruntime.InferenceSession(arguments.output, providers=["CPUExecutionProvider"])
    onnx_predicted = session.run(None, {"features": x_holdout.astype(np.float32)})[0][:, 0]
    difference = float(np.max(np.abs(onnx_predicted - model.predict(x_holdout))))
    print(
        f"onnxruntime {onnxruntime.__version__} vs scikit-learn: "
        f"max |difference| {difference:.2e} kW"
    )

    rows = expectation_rows(model, x_holdout, ranges)
    arguments.expectations.write_text(
        json.dumps({"model": VERSION, "tolerance_kw": 1e-4, "rows": rows}, indent=1) + "\n"
    )
    size = arguments.output.stat().st_size
    print(
        f"wrote {arguments.output} ({size} bytes) and {arguments.expectations} ({len(rows)} rows)"
    )
    print(f"done in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
