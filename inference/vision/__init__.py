"""Vision inspection: model adapters (`adapters`), pre-processing (`preprocess`), evidence
images (`evidence`), the inspection station (`station`) and `shopfloor model info` (`info`).

Importing this package loads nothing heavy; its modules import numpy, OpenCV and onnxruntime.
"""
