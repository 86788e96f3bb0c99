"""Train the demo's washer anomaly model on good parts only; export washer_anomaly.onnx.

A small convolutional autoencoder learns to redraw good washers (gray, 128x128) through a narrow
bottleneck. Whatever it cannot redraw is unusual: the anomaly map is the squared difference
between the part and its redrawing, smoothed over a few pixels; the part's score is the map's
maximum. The threshold is a high percentile of the scores of good validation parts (no defect is
ever shown to it), and scores and maps are normalised the anomalib way,
((x - threshold) / (max - min)) + 0.5 clipped to 0..1, so 0.5 is the decision threshold.

The ONNX file follows anomalib 2.x's export layout, so the agent loads it like any anomalib model:
input `input` [N, 3, 128, 128] RGB in 0..1 (gray conversion and normalisation are in the graph);
outputs `pred_score` [N], `pred_label` [N] bool, `anomaly_map` [N, 1, 128, 128] and `pred_mask`
[N, 1, 128, 128] bool.

Usage (from the repository root, in an environment with torch; see tools/README.md):

    python tools/train_washer_anomaly.py
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
from torch.nn import functional
from washer_data import DEFECTS, REPO, generate, write_onnx

IMAGE_SIZE = 128
MEAN = 0.5
STD = 0.25
VERSION = "1.0.0"
OPSET = 18
# ITU-R BT.601 luma, as cv2.cvtColor(..., COLOR_RGB2GRAY) computes it.
LUMA = (0.299, 0.587, 0.114)
# Convolutions pad by repeating the edge pixels: zero padding made the image border look unusual
# wherever a washer touched it.
EDGE = "replicate"


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 2-D Gaussian, shaped as a one-channel convolution weight."""
    radius = round(3 * sigma)
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    line = torch.exp(-(steps**2) / (2 * sigma**2))
    kernel = torch.outer(line, line)
    return (kernel / kernel.sum()).reshape(1, 1, 2 * radius + 1, 2 * radius + 1)


class AutoEncoder(nn.Module):
    """Normalised gray (N, 1, H, W) in, its reconstruction out; H and W divisible by 8."""

    def __init__(self, widths: tuple[int, ...] = (16, 24, 32), bottleneck: int = 8):
        super().__init__()
        encoder: list[nn.Module] = []
        channels = 1
        for width in widths:
            encoder += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1, padding_mode=EDGE),
                nn.ReLU(inplace=True),
            ]
            channels = width
        encoder.append(nn.Conv2d(channels, bottleneck, 1))
        decoder: list[nn.Module] = [nn.Conv2d(bottleneck, channels, 1), nn.ReLU(inplace=True)]
        for width in (*reversed(widths[:-1]), widths[0]):
            decoder += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(channels, width, 3, padding=1, padding_mode=EDGE),
                nn.ReLU(inplace=True),
            ]
            channels = width
        decoder.append(nn.Conv2d(channels, 1, 3, padding=1, padding_mode=EDGE))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))


class AnomalyMap(nn.Module):
    """Normalised gray in, smoothed squared reconstruction error out (N, 1, H, W).

    The outer `border` pixels are not inspected (their map is 0): the autoencoder redraws the
    image's edge poorly, and parts lie well inside the camera's view.
    """

    def __init__(self, autoencoder: AutoEncoder, sigma: float, border: int):
        super().__init__()
        self.autoencoder = autoencoder
        self.register_buffer("smoothing", gaussian_kernel(sigma))
        self.padding = self.smoothing.shape[-1] // 2
        self.border = border

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        error = (gray - self.autoencoder(gray)) ** 2
        smoothed = functional.conv2d(error, self.smoothing, padding=self.padding)
        inner = smoothed[:, :, self.border : -self.border, self.border : -self.border]
        return functional.pad(inner, (self.border,) * 4)


class AnomalibLayout(nn.Module):
    """RGB 0..1 in; pred_score, pred_label, anomaly_map, pred_mask out, normalised in-graph."""

    def __init__(
        self,
        anomaly_map: AnomalyMap,
        threshold: float,
        score_range: tuple[float, float],
        map_range: tuple[float, float],
    ):
        super().__init__()
        self.anomaly_map = anomaly_map
        self.register_buffer("luma", torch.tensor(LUMA).reshape(1, 3, 1, 1))
        self.threshold = threshold
        self.score_span = score_range[1] - score_range[0]
        self.map_span = map_range[1] - map_range[0]

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gray = ((rgb * self.luma).sum(dim=1, keepdim=True) - MEAN) / STD
        raw_map = self.anomaly_map(gray)
        raw_score = torch.amax(raw_map, dim=(1, 2, 3))
        score = torch.clamp((raw_score - self.threshold) / self.score_span + 0.5, 0.0, 1.0)
        normalised_map = torch.clamp((raw_map - self.threshold) / self.map_span + 0.5, 0.0, 1.0)
        return score, score >= 0.5, normalised_map, normalised_map >= 0.5


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Gray uint8 (N, H, W) to the normalised float tensor (N, 1, H, W)."""
    tensor = torch.from_numpy(images).unsqueeze(1).float() / 255.0
    return (tensor - MEAN) / STD


def raw_maps(anomaly_map: AnomalyMap, images: np.ndarray, batch_size: int = 200) -> np.ndarray:
    """Unnormalised anomaly maps (N, H, W) of gray uint8 images."""
    anomaly_map.eval()
    maps = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            maps.append(anomaly_map(to_tensor(images[start : start + batch_size]))[:, 0].numpy())
    return np.concatenate(maps)


def train(
    autoencoder: AutoEncoder, images: np.ndarray, epochs: int, batch_size: int, seed: int
) -> None:
    """Mean squared reconstruction error, Adam with a one-cycle rate, flips and quarter turns."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(autoencoder.parameters(), lr=2e-3)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps)
    for epoch in range(epochs):
        autoencoder.train()
        started = time.perf_counter()
        order = torch.randperm(len(images), generator=generator).numpy()
        total = 0.0
        for start in range(0, len(images), batch_size):
            chosen = order[start : start + batch_size]
            batch = to_tensor(images[chosen])
            if torch.rand(1, generator=generator).item() < 0.5:
                batch = batch.flip(3)
            turns = int(torch.randint(0, 4, (1,), generator=generator).item())
            batch = torch.rot90(batch, turns, dims=(2, 3))
            loss = functional.mse_loss(autoencoder(batch), batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(chosen)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.5f} "
            f"({time.perf_counter() - started:.1f} s)"
        )


def export(model: AnomalibLayout, path: Path, metadata: dict[str, str]) -> None:
    """Write the ONNX file (one file, weights inside) with the metadata the agent reads."""
    model.eval()
    example = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["input"],
        output_names=["pred_score", "pred_label", "anomaly_map", "pred_mask"],
        dynamic_shapes={"rgb": {0: torch.export.Dim("batch", min=1, max=1024)}},
        opset_version=OPSET,
        external_data=False,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    write_onnx(program.model_proto, path, metadata)


def rgb_input(images_rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (N, H, W, 3) to the model's input (N, 3, H, W) float 0..1."""
    return np.ascontiguousarray(images_rgb.transpose(0, 3, 1, 2), np.float32) / np.float32(255.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-count", type=int, default=3000, help="good parts")
    parser.add_argument("--validation-count", type=int, default=1000, help="good parts")
    parser.add_argument("--holdout-count", type=int, default=1000, help="all classes")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sigma", type=float, default=1.0, help="smoothing of the map, px")
    parser.add_argument("--border", type=int, default=4, help="px not inspected, at 128x128")
    parser.add_argument("--percentile", type=float, default=99.5, help="of good scores")
    parser.add_argument("--seed", type=int, default=2, help="training data and weights")
    parser.add_argument("--validation-seed", type=int, default=1002)
    parser.add_argument("--holdout-seed", type=int, default=2002)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--output", type=Path, default=REPO / "inference" / "models" / "washer_anomaly.onnx"
    )
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(arguments.seed)
    began = time.perf_counter()

    good = ("ok",)
    train_images, _ = generate(
        arguments.seed, arguments.train_count, IMAGE_SIZE, IMAGE_SIZE, gray=True, classes=good
    )
    validation_images, _ = generate(
        arguments.validation_seed,
        arguments.validation_count,
        IMAGE_SIZE,
        IMAGE_SIZE,
        gray=True,
        classes=good,
    )
    print(
        f"generated {len(train_images)} + {len(validation_images)} good parts "
        f"in {time.perf_counter() - began:.1f} s"
    )

    autoencoder = AutoEncoder()
    parameters = sum(parameter.numel() for parameter in autoencoder.parameters())
    print(f"AutoEncoder: {parameters} parameters")
    trained = time.perf_counter()
    train(autoencoder, train_images, arguments.epochs, arguments.batch_size, arguments.seed)
    print(f"trained in {time.perf_counter() - trained:.1f} s")

    anomaly_map = AnomalyMap(autoencoder, arguments.sigma, arguments.border)
    validation_maps = raw_maps(anomaly_map, validation_images)
    validation_scores = validation_maps.max(axis=(1, 2))
    threshold = float(np.percentile(validation_scores, arguments.percentile))
    score_range = (float(validation_scores.min()), float(validation_scores.max()))
    map_range = (float(validation_maps.min()), float(validation_maps.max()))
    print(
        f"good validation scores: min {score_range[0]:.4f}, median "
        f"{np.median(validation_scores):.4f}, max {score_range[1]:.4f}; threshold "
        f"({arguments.percentile} percentile) {threshold:.4f}"
    )

    model = AnomalibLayout(anomaly_map, threshold, score_range, map_range)
    metadata = {
        "name": "washer-anomaly",
        "version": VERSION,
        "task": "anomaly",
        "imgsz": json.dumps([IMAGE_SIZE, IMAGE_SIZE]),
        "description": (
            "Demo model: autoencoder trained on good synthetic washers from "
            f"drivers/simulate/parts.py by tools/train_washer_anomaly.py (seed {arguments.seed}, "
            f"{arguments.train_count} parts); threshold at the {arguments.percentile} percentile "
            f"of {arguments.validation_count} good validation parts."
        ),
    }
    export(model, arguments.output, metadata)

    holdout_rgb, holdout_labels = generate(
        arguments.holdout_seed, arguments.holdout_count, IMAGE_SIZE, IMAGE_SIZE, gray=False
    )
    session = onnxruntime.InferenceSession(arguments.output, providers=["CPUExecutionProvider"])
    scores, labels, _, _ = session.run(None, {"input": rgb_input(holdout_rgb)})
    print(f"held-out ({len(holdout_labels)} parts, onnxruntime): share judged NG per class")
    for index, name in enumerate(DEFECTS):
        chosen = holdout_labels == index
        rate = float(labels[chosen].mean())
        print(
            f"  {name:>8}: {rate:.3f}  (score median {np.median(scores[chosen]):.3f}, "
            f"{'false NG' if index == 0 else 'detected'})"
        )
    size = arguments.output.stat().st_size
    elapsed = time.perf_counter() - began
    print(f"wrote {arguments.output} ({size / 1024:.1f} KiB) in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
