"""Synthetic washers on a conveyor, for the vision demo, its camera and the demo models.

`make_part(rng, defect)` draws one 256x256 BGR image of a steel washer on a dark belt: its
position, radius, hole size, rotation (where the light's highlight falls), exposure, lighting
gradient, focus and sensor noise vary from part to part. A defect is drawn on the washer's ring:

- ``scratch``: a thin bright or dark line, 14 to 30 px long, slightly bent;
- ``spot``: a dark stain, 5 to 10 px across, slightly elongated;
- ``chip``: a bite out of the outer (or, less often, the inner) edge, 10 to 18 px across.

Sizes are given for 256 px images and scale with `size`. Everything comes from the generator
passed in, so the same seed draws the same parts (tests regenerate a held-out set this way, the
training tools in tools/ their training set). numpy and OpenCV only: the demo's simulated camera
uses it at run time, where torch is not installed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFECTS", "PartStream", "make_dataset", "make_part"]

DEFECTS: tuple[str, ...] = ("ok", "scratch", "spot", "chip")

_Float = NDArray[np.float32]
_REFERENCE_SIZE = 256.0


@lru_cache(maxsize=8)
def _axes(size: int) -> tuple[_Float, _Float]:
    """Pixel-centre coordinates as a row and a column, broadcast to a grid where needed."""
    coordinates = np.arange(size, dtype=np.float32)
    return coordinates.reshape(1, size), coordinates.reshape(size, 1)


def _distance(size: int, centre_x: float, centre_y: float) -> _Float:
    """Distance of every pixel from a point."""
    xs, ys = _axes(size)
    dx = xs - np.float32(centre_x)
    dy = ys - np.float32(centre_y)
    distance: _Float = np.sqrt(dx * dx + dy * dy)
    return distance


@dataclass(frozen=True, slots=True)
class _Washer:
    """Where the washer lies: centre (x, y), hole and outer radius, px per reference px."""

    centre: tuple[float, float]
    inner: float
    outer: float
    unit: float

    def ring_point(self, rng: np.random.Generator) -> tuple[float, float]:
        """A random point well inside the ring (not on its edges)."""
        width = self.outer - self.inner
        radius = rng.uniform(self.inner + 0.3 * width, self.outer - 0.3 * width)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        return self.centre[0] + radius * np.cos(angle), self.centre[1] + radius * np.sin(angle)


def _draw_scratch(rng: np.random.Generator, shading: _Float, washer: _Washer) -> None:
    """Add a thin line to the washer's shading: bright (it catches the light) or dark."""
    size, unit = shading.shape[0], washer.unit
    mid_x, mid_y = washer.ring_point(rng)
    length = rng.uniform(14.0, 30.0) * unit
    direction = rng.uniform(0.0, np.pi)
    bend = rng.uniform(-0.12, 0.12) * length
    along_x, along_y = np.cos(direction), np.sin(direction)
    points = np.array(
        [
            [mid_x - along_x * length / 2, mid_y - along_y * length / 2],
            [mid_x - along_y * bend, mid_y + along_x * bend],
            [mid_x + along_x * length / 2, mid_y + along_y * length / 2],
        ]
    )
    # cv2 draws anti-aliased lines at sub-pixel precision with fixed-point coordinates.
    shift = 4
    fixed = np.round(points * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    mask = np.zeros((size, size), np.float32)
    thickness = 1 if unit < 1.5 else round(unit)
    cv2.polylines(mask, [fixed], False, 1.0, thickness, cv2.LINE_AA, shift)
    contrast = rng.uniform(0.35, 0.6) * (1.0 if rng.random() < 0.5 else -0.8)
    shading += np.float32(contrast) * mask


def _draw_spot(rng: np.random.Generator, shading: _Float, washer: _Washer) -> None:
    """Darken a small soft-edged ellipse of the washer (a stain or a pit)."""
    size = shading.shape[0]
    spot_x, spot_y = washer.ring_point(rng)
    radius = rng.uniform(2.5, 5.0) * washer.unit
    aspect = rng.uniform(1.0, 1.5)
    angle = rng.uniform(0.0, np.pi)
    xs, ys = _axes(size)
    dx = xs - np.float32(spot_x)
    dy = ys - np.float32(spot_y)
    cos_a, sin_a = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (dx * cos_a + dy * sin_a) / np.float32(aspect)
    v = dy * cos_a - dx * sin_a
    # Soft edge over about a pixel, so the spot is not a hard disc.
    inside = np.clip(np.float32(radius) - np.sqrt(u * u + v * v) + 0.5, 0.0, 1.0)
    darkening = rng.uniform(0.4, 0.7)
    shading *= 1.0 - np.float32(darkening) * inside


def _chip_mask(rng: np.random.Generator, size: int, washer: _Washer) -> _Float:
    """Coverage left after biting a disc out of the outer or the inner edge (1 = material)."""
    radius = rng.uniform(5.0, 9.0) * washer.unit
    angle = rng.uniform(0.0, 2.0 * np.pi)
    # The disc's centre lies near the edge, so the bite is at least 0.7 radius deep.
    if rng.random() < 0.75:
        at = washer.outer + rng.uniform(-0.1, 0.3) * radius
    else:
        at = washer.inner - rng.uniform(-0.1, 0.3) * radius
    chip_x = washer.centre[0] + at * np.cos(angle)
    chip_y = washer.centre[1] + at * np.sin(angle)
    left: _Float = np.clip(_distance(size, chip_x, chip_y) - np.float32(radius) + 0.5, 0.0, 1.0)
    return left


def make_part(rng: np.random.Generator, defect: str, size: int = 256) -> NDArray[np.uint8]:
    """Draw one washer with `defect` (one of DEFECTS) as a BGR uint8 image of size x size."""
    if defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}: choose one of {', '.join(DEFECTS)}")
    unit = size / _REFERENCE_SIZE
    half = size / 2.0
    # The defect draws from its own generator, so the rest of the part (and the generator's
    # state afterwards) is the same whichever defect it has: one seed, one washer.
    defect_rng = np.random.default_rng(rng.integers(2**63))

    outer = rng.uniform(0.28, 0.36) * size
    inner = outer * rng.uniform(0.42, 0.52)
    # The camera is set up so that a part lies well inside its view: at least 14 px from the edge.
    jitter = max(half - outer - 14.0 * unit, 0.0)
    centre = (half + rng.uniform(-jitter, jitter), half + rng.uniform(-jitter, jitter))
    rotation = rng.uniform(0.0, 2.0 * np.pi)

    xs, ys = _axes(size)
    dx = xs - np.float32(centre[0])
    dy = ys - np.float32(centre[1])
    distance = np.sqrt(dx * dx + dy * dy)

    # Steel: brightest halfway across the ring (a flat face with rounded edges), a highlight on
    # the side facing the light (where it falls is the part's rotation), faint turning marks.
    ring_width = outer - inner
    across = (distance - np.float32(inner)) / np.float32(ring_width)
    highlight = (dx * np.float32(np.cos(rotation)) + dy * np.float32(np.sin(rotation))) / (
        distance + np.float32(1.0)
    )
    shading = np.float32(rng.uniform(0.5, 0.68)) * (
        np.float32(0.9)
        + np.float32(0.1) * np.sin(np.float32(np.pi) * np.clip(across, 0.0, 1.0))
        + np.float32(rng.uniform(0.04, 0.14)) * highlight
        + np.float32(0.015)
        * np.sin(distance * np.float32(rng.uniform(1.2, 2.0) / unit) + np.float32(rotation))
    )

    coverage = np.clip(np.float32(outer + 0.5) - distance, 0.0, 1.0) * np.clip(
        distance - np.float32(inner - 0.5), 0.0, 1.0
    )
    washer = _Washer(centre, inner, outer, unit)
    if defect == "scratch":
        _draw_scratch(defect_rng, shading, washer)
    elif defect == "spot":
        _draw_spot(defect_rng, shading, washer)
    elif defect == "chip":
        coverage *= _chip_mask(defect_rng, size, washer)

    # The belt: dark, with a soft shadow of the washer towards the side away from the light.
    belt_level = np.float32(rng.uniform(0.1, 0.24))
    shadow_offset = 4.0 * unit
    shadow_distance = _distance(
        size,
        centre[0] - shadow_offset * np.cos(rotation),
        centre[1] - shadow_offset * np.sin(rotation),
    )
    shadow = np.clip(
        (np.float32(outer + 3.0 * unit) - shadow_distance) / np.float32(6.0 * unit), 0, 1
    )
    background = belt_level * (np.float32(1.0) - np.float32(0.35) * shadow)

    # Lighting across the field of view: exposure times a linear gradient.
    light_angle = rng.uniform(0.0, 2.0 * np.pi)
    slope = rng.uniform(0.0, 0.35) / size
    lighting = np.float32(rng.uniform(0.8, 1.2)) * (
        np.float32(1.0)
        + np.float32(slope * np.cos(light_angle)) * (xs - np.float32(half))
        + np.float32(slope * np.sin(light_angle)) * (ys - np.float32(half))
    )

    washer_tint = rng.uniform(0.97, 1.03, 3) * (1.03, 1.0, 0.96)
    belt_tint = rng.uniform(0.9, 1.1, 3) * (1.0, 1.05, 0.95)
    sigma = rng.uniform(0.3, 1.0) * unit
    washer = cv2.GaussianBlur(shading * coverage * lighting, (0, 0), sigma)
    belt = cv2.GaussianBlur(background * (np.float32(1.0) - coverage) * lighting, (0, 0), sigma)
    # Sensor noise, uniform with the standard deviation drawn here (normal draws cost 5x more).
    noise_sd = rng.uniform(0.008, 0.025)
    noise = rng.random((size, size), dtype=np.float32) - np.float32(0.5)
    noise *= np.float32(noise_sd * np.sqrt(12.0))
    image = cv2.merge(
        [
            washer * np.float32(washer_tint[channel])
            + belt * np.float32(belt_tint[channel])
            + noise
            for channel in range(3)
        ]
    )
    scaled = image * np.float32(255.0) + np.float32(0.5)
    pixels: NDArray[np.uint8] = np.clip(scaled, 0, 255).astype(np.uint8)
    return pixels


def make_dataset(
    seed: int, count: int, defect_rate: float | None = None, size: int = 256
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Draw `count` parts: images (count, size, size, 3) BGR uint8 and labels (indices in DEFECTS).

    With `defect_rate` None the classes are balanced (as equal as `count` allows, in random
    order); otherwise each part is defective with that probability, the defect chosen uniformly.
    """
    rng = np.random.default_rng(seed)
    if defect_rate is None:
        labels = rng.permutation(np.arange(count, dtype=np.int64) % len(DEFECTS))
    else:
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be between 0 and 1, not {defect_rate}")
        defective = rng.random(count) < defect_rate
        kinds = rng.integers(1, len(DEFECTS), count)
        labels = np.where(defective, kinds, 0).astype(np.int64)
    images = np.empty((count, size, size, 3), np.uint8)
    for index, label in enumerate(labels):
        images[index] = make_part(rng, DEFECTS[label], size)
    return images, labels


class PartStream:
    """An endless line of parts for the demo camera, reproducible by seed.

    Thread-safe: a camera server may ask for parts from several threads.
    """

    def __init__(self, seed: int = 0, defect_rate: float = 0.1, size: int = 256) -> None:
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be between 0 and 1, not {defect_rate}")
        self.defect_rate = defect_rate
        self.size = size
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.produced = 0

    def next_part(self) -> tuple[NDArray[np.uint8], str]:
        """The next part's image (BGR uint8) and its true label (one of DEFECTS)."""
        with self._lock:
            if self._rng.random() < self.defect_rate:
                label = DEFECTS[int(self._rng.integers(1, len(DEFECTS)))]
            else:
                label = DEFECTS[0]
            image = make_part(self._rng, label, self.size)
            self.produced += 1
        return image, label

    def next_image(self) -> NDArray[np.uint8]:
        """The next part's image alone (a frame source for `SimulatedCamera`)."""
        return self.next_part()[0]
