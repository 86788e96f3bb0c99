"""Train the demo's washer classifier and export inference/models/washer_classifier.onnx.

A tiny CNN (four 3x3 convolution blocks, global max pooling, one linear layer) learns the four
classes of drivers/simulate/parts.py (ok, scratch, spot, chip) from synthetic parts, on the CPU.
Global max pooling is what lets it find a defect a few pixels wide anywhere on the washer
(average pooling dilutes it into the whole image). Input: the whole frame as gray, stretched to
128x128, scaled to 0..1, then (x - 0.5) / 0.25; output: logits. The description the agent needs
(classes, input format, NG classes, threshold) is written into the model's metadata_props.

Deterministic by seed (same data, same initial weights, single-threaded reductions aside).
Usage (from the repository root, in an environment with torch; see tools/README.md):

    python tools/train_washer_classifier.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn
from washer_data import DEFECTS, REPO, generate, write_onnx

IMAGE_SIZE = 128
MEAN = 0.5
STD = 0.25
NG_CLASSES = ("scratch", "spot", "chip")
VERSION = "1.0.0"
OPSET = 18


class WasherNet(nn.Module):
    """Four conv-BN-ReLU blocks (the first three halve the size), global max pool, linear."""

    def __init__(self, classes: int = len(DEFECTS), widths: tuple[int, ...] = (8, 16, 24, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for index, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if index < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        return self.head(torch.amax(features, dim=(2, 3)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Gray uint8 (N, H, W) to the normalised float tensor (N, 1, H, W) the network takes."""
    tensor = torch.from_numpy(images).unsqueeze(1).float() / 255.0
    return (tensor - MEAN) / STD


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns: a washer looks the same in any orientation."""
    if torch.rand(1, generator=generator).item() < 0.5:
        batch = batch.flip(3)
    turns = int(torch.randint(0, 4, (1,), generator=generator).item())
    return torch.rot90(batch, turns, dims=(2, 3))


def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class indices predicted for gray uint8 images."""
    model.eval()
    predictions = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(to_tensor(images[start : start + batch_size]))
            predictions.append(logits.argmax(1).numpy())
    return np.concatenate(predictions)


def confusion(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((len(DEFECTS), len(DEFECTS)), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def report(title: str, labels: np.ndarray, predictions: np.ndarray) -> float:
    """Print accuracy, per-class recall, OK-vs-NG accuracy and the confusion matrix."""
    accuracy = float((labels == predictions).mean())
    ok_vs_ng = float(((labels == 0) == (predictions == 0)).mean())
    print(f"{title}: accuracy {accuracy:.4f}, OK vs NG {ok_vs_ng:.4f} ({len(labels)} parts)")
    matrix = confusion(labels, predictions)
    print("  true \\ predicted " + " ".join(f"{name:>8}" for name in DEFECTS) + "   recall")
    for index, name in enumerate(DEFECTS):
        row = " ".join(f"{count:8d}" for count in matrix[index])
        print(f"  {name:>16} {row}   {matrix[index, index] / matrix[index].sum():.3f}")
    return accuracy


def train(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
) -> None:
    """Adam with a one-cycle learning rate, cross-entropy, augmented batches."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    loss_function = nn.CrossEntropyLoss()
    targets = torch.from_numpy(labels)
    for epoch in range(epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(images), generator=generator).numpy()
        total = 0.0
        for start in range(0, len(images), batch_size):
            chosen = order[start : start + batch_size]
            batch = augment(to_tensor(images[chosen]), generator)
            loss = loss_function(model(batch), targets[chosen])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(chosen)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f} "
            f"({time.perf_counter() - started:.1f} s)"
        )


def export(model: nn.Module, path: Path, seed: int, train_count: int) -> None:
    """Write the ONNX file (one file, weights inside) with the metadata the agent reads."""
    model.eval()
    example = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=1024)}},
        opset_version=OPSET,
        external_data=False,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    metadata = {
        "name": "washer-classifier",
        "version": VERSION,
        "task": "classify",
        "names": repr(dict(enumerate(DEFECTS))),
        "imgsz": json.dumps([IMAGE_SIZE, IMAGE_SIZE]),
        "color": "GRAY",
        "scale": repr(1.0 / 255.0),
        "mean": json.dumps([MEAN]),
        "std": json.dumps([STD]),
        "resize": "stretch",
        "output": "logits",
        "threshold": "0.5",
        "ng_classes": json.dumps(list(NG_CLASSES)),
        "description": (
            "Demo model: synthetic washers from drivers/simulate/parts.py, trained by "
            f"tools/train_washer_classifier.py (seed {seed}, {train_count} parts)."
        ),
    }
    write_onnx(program.model_proto, path, metadata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-count", type=int, default=6000)
    parser.add_argument("--holdout-count", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="training data and weights")
    parser.add_argument("--holdout-seed", type=int, default=1001)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--output", type=Path, default=REPO / "inference" / "models" / "washer_classifier.onnx"
    )
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(arguments.seed)
    began = time.perf_counter()

    train_images, train_labels = generate(
        arguments.seed, arguments.train_count, IMAGE_SIZE, IMAGE_SIZE, gray=True
    )
    holdout_images, holdout_labels = generate(
        arguments.holdout_seed, arguments.holdout_count, IMAGE_SIZE, IMAGE_SIZE, gray=True
    )
    print(
        f"generated {arguments.train_count} + {arguments.holdout_count} parts "
        f"in {time.perf_counter() - began:.1f} s"
    )

    model = WasherNet()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"WasherNet: {parameters} parameters")
    trained = time.perf_counter()
    train(
        model,
        train_images,
        train_labels,
        epochs=arguments.epochs,
        batch_size=arguments.batch_size,
        seed=arguments.seed,
    )
    print(f"trained in {time.perf_counter() - trained:.1f} s")
    report("held-out (torch)", holdout_labels, predict(model, holdout_images))

    export(model, arguments.output, arguments.seed, arguments.train_count)
    session = onnxruntime.InferenceSession(arguments.output, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": to_tensor(holdout_images).numpy()})[0]
    report("held-out (onnxruntime)", holdout_labels, logits.argmax(1))
    size = arguments.output.stat().st_size
    elapsed = time.perf_counter() - began
    print(f"wrote {arguments.output} ({size / 1024:.1f} KiB) in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
