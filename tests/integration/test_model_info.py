"""`shopfloor model info` as an engineer runs it: the installed command in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.onnx_graphs import channel_mean_classifier, constant_model, yolo_raw_tensor

SHOPFLOOR = Path(sys.executable).parent / "shopfloor"


def _shopfloor(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHOPFLOOR), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def washer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    path = channel_mean_classifier(
        folder / "washer.onnx",
        softmax=True,
        metadata={
            "name": "washer-colour",
            "version": "1.2",
            "names": {0: "ok", 1: "scratch", 2: "spot"},
            "output": "probabilities",
            "ng_classes": ["scratch", "spot"],
        },
    )
    (folder / "washer.yaml").write_text("threshold: 0.6\ncolor: BGR\n", encoding="utf-8")
    return path


def test_human_output_names_every_value_and_its_origin(washer: Path) -> None:
    result = _shopfloor("model", "info", washer)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "washer-colour 1.2" in out
    assert "classifier" in out
    assert "input" in out and "[1, 3, 32, 32]" in out
    assert "output" in out and "[1, 3]" in out
    assert "0 ok, 1 scratch, 2 spot" in out
    assert "scratch, spot" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "0.6" in lines["threshold"] and "sidecar" in lines["threshold"]
    assert "BGR" in lines["colour"] and "sidecar" in lines["colour"]
    assert "32 x 32" in lines["size"] and "inferred" in lines["size"]
    assert "stretch" in lines["resize"] and "default" in lines["resize"]
    assert "1/255" in lines["scale"]
    assert "0.485, 0.456, 0.406" in lines["mean"] and "default" in lines["mean"]
    assert "model metadata" in lines["classes"]
    assert "One run on a blank image" in out


def test_json_output(washer: Path) -> None:
    result = _shopfloor("model", "info", washer, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["family"] == "classifier"
    assert info["name"] == "washer-colour" and info["version"] == "1.2"
    assert info["inputs"] == [{"name": "input", "shape": [1, 3, 32, 32], "type": "tensor(float)"}]
    assert info["outputs"] == [{"name": "output", "shape": [1, 3], "type": "tensor(float)"}]
    assert info["classes"] == {"0": "ok", "1": "scratch", "2": "spot"}
    assert info["ng_classes"] == ["scratch", "spot"]
    assert info["threshold"] == 0.6
    assert info["preprocessing"] == {
        "color": "BGR",
        "imgsz": [32, 32],
        "resize": "stretch",
        "pad_value": None,
        "scale": pytest.approx(1 / 255),
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert info["origin"]["threshold"] == "sidecar"
    assert info["origin"]["names"] == "metadata"
    assert info["origin"]["imgsz"] == "inferred"
    assert info["origin"]["mean"] == "default"
    assert info["check_run_ms"] > 0


def test_a_yolo_model(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "yolo.onnx",
        {"output0": yolo_raw_tensor([], classes=2)},
        input_shape=(1, 3, 320, 320),
        metadata={"author": "Ultralytics", "names": "{0: 'part', 1: 'scratch'}", "stride": "32"},
    )
    result = _shopfloor("model", "info", path, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["family"] == "yolo_raw"
    assert info["preprocessing"]["resize"] == "letterbox"
    assert info["preprocessing"]["pad_value"] == 114
    assert info["threshold"] == 0.25


def test_an_unknown_layout_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = constant_model(
        tmp_path / "features.onnx",
        {
            "embedding": np.zeros((1, 8, 4, 4), dtype=np.float32),
            "logits": np.zeros((1, 5), dtype=np.float32),
        },
    )
    result = _shopfloor("model", "info", path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "embedding [1, 8, 4, 4]" in result.stderr
    assert "logits [1, 5]" in result.stderr
    assert "task:" in result.stderr


def test_a_missing_or_invalid_file_exits_2(tmp_path: Path) -> None:
    result = _shopfloor("model", "info", tmp_path / "nothing.onnx")
    assert result.returncode == 2
    assert "nothing.onnx does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    broken = tmp_path / "broken.onnx"
    broken.write_text("<html>404</html>", encoding="utf-8")
    result = _shopfloor("model", "info", broken, "--json")
    assert result.returncode == 2
    assert "broken.onnx cannot be loaded by onnxruntime" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_help_does_not_load_the_vision_packages() -> None:
    code = (
        "import sys\n"
        "from agent.cli import main\n"
        "try:\n"
        "    main(['model', 'info', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'numpy', 'cv2', 'onnxruntime'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
