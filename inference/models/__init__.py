"""The demo's ONNX models, shipped with the package (tools/ trains them; tools/README.md).

- washer_classifier.onnx: ok / scratch / spot / chip for the synthetic washers of
  drivers/simulate/parts.py; a plain classifier described by its metadata_props.
- washer_anomaly.onnx: trained on good washers only, in anomalib 2.x's export layout.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODELS_DIR", "WASHER_ANOMALY", "WASHER_CLASSIFIER"]

MODELS_DIR = Path(__file__).resolve().parent
WASHER_CLASSIFIER = MODELS_DIR / "washer_classifier.onnx"
WASHER_ANOMALY = MODELS_DIR / "washer_anomaly.onnx"
