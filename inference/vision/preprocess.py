"""From a camera crop to a model's input tensor, and from model pixels back to frame pixels.

Frames are OpenCV images: BGR uint8 H x W x 3, or H x W gray. A crop is resized to the model's
`imgsz` (stretched, or letterboxed: scaled to fit and padded, as Ultralytics YOLO expects),
put in the model's colour order, scaled and normalised per channel, and laid out NCHW.
`Placement` records the geometry so boxes and maps found in model pixels land on the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from inference.session import ModelDescription

__all__ = ["Placement", "letterbox", "prepare"]


@dataclass(frozen=True, slots=True)
class Placement:
    """How model-input pixel coordinates map to frame pixel coordinates.

    frame = roi + (input - pad) / scale, per axis. Coordinates are continuous (pixel edges
    at whole numbers), so a box's corners map exactly.
    """

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    roi_x: float
    roi_y: float

    def to_frame(self, x: float, y: float) -> tuple[float, float]:
        """A point in model-input pixels, in frame pixels."""
        return (
            self.roi_x + (x - self.pad_x) / self.scale_x,
            self.roi_y + (y - self.pad_y) / self.scale_y,
        )

    def to_input(self, x: float, y: float) -> tuple[float, float]:
        """A point in frame pixels, in model-input pixels."""
        return (
            (x - self.roi_x) * self.scale_x + self.pad_x,
            (y - self.roi_y) * self.scale_y + self.pad_y,
        )


def _letterbox_geometry(
    height: int, width: int, target_height: int, target_width: int
) -> tuple[int, int, int, int]:
    """(new_width, new_height, left, top) of an image letterboxed into the target size."""
    scale = min(target_height / height, target_width / width)
    new_width = min(target_width, max(1, round(width * scale)))
    new_height = min(target_height, max(1, round(height * scale)))
    # An odd padding leaves the extra pixel on the right / bottom.
    return new_width, new_height, (target_width - new_width) // 2, (target_height - new_height) // 2


def letterbox(
    image: npt.NDArray[np.uint8], height: int, width: int, pad_value: int
) -> tuple[npt.NDArray[np.uint8], float, float, float]:
    """Scale an image to fit height x width keeping its aspect ratio, and pad the rest with
    `pad_value`. Returns (image, scale, pad_x, pad_y): pad_x/pad_y are the left/top padding."""
    source_height, source_width = image.shape[:2]
    new_width, new_height, left, top = _letterbox_geometry(
        source_height, source_width, height, width
    )
    resized = _resize(image, new_width, new_height)
    padded = cv2.copyMakeBorder(
        resized,
        top,
        height - new_height - top,
        left,
        width - new_width - left,
        cv2.BORDER_CONSTANT,
        value=(pad_value, pad_value, pad_value, 0),
    )
    scale = min(height / source_height, width / source_width)
    return np.asarray(padded, dtype=np.uint8), scale, float(left), float(top)


def _resize(image: npt.NDArray[np.uint8], width: int, height: int) -> npt.NDArray[np.uint8]:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.asarray(resized, dtype=np.uint8)


def prepare(
    crop_bgr: npt.NDArray[np.uint8],
    description: ModelDescription,
    roi_origin: tuple[int, int] = (0, 0),
) -> tuple[npt.NDArray[np.float32], Placement]:
    """The model's input tensor (1 x C x H x W float32, contiguous) for a crop of a frame,
    and where the crop's pixels went. `roi_origin` is the crop's top-left corner in the frame.

    Raises ValueError for an empty crop, or one that is not an 8-bit image.
    """
    if crop_bgr.ndim not in (2, 3) or crop_bgr.shape[0] == 0 or crop_bgr.shape[1] == 0:
        raise ValueError(f"cannot inspect an empty or non-image crop of shape {crop_bgr.shape}")
    if crop_bgr.dtype != np.uint8:
        raise ValueError(f"cannot inspect a crop of {crop_bgr.dtype} pixels: frames are uint8")
    crop_height, crop_width = crop_bgr.shape[:2]
    height, width = description.imgsz
    if description.resize == "letterbox":
        new_width, new_height, left, top = _letterbox_geometry(
            crop_height, crop_width, height, width
        )
        resized, _, _, _ = letterbox(crop_bgr, height, width, description.pad_value)
        placement = Placement(
            new_width / crop_width, new_height / crop_height, left, top, *roi_origin
        )
    else:
        # Colour conversion after resizing: fewer pixels to convert, the same result.
        resized = _resize(crop_bgr, width, height)
        placement = Placement(width / crop_width, height / crop_height, 0.0, 0.0, *roi_origin)
    pixels = _in_color_order(resized, description.color)
    scale = np.float32(description.scale)
    std = np.asarray(description.std, dtype=np.float32)
    factor = (scale / std)[:, np.newaxis, np.newaxis]
    offset = (np.asarray(description.mean, dtype=np.float32) / std)[:, np.newaxis, np.newaxis]
    # Channels first, then scaled per channel plane: numpy broadcasting over a trailing axis
    # of 3 is several times slower (0.3 ms against 0.05 ms at 224 x 224).
    tensor = np.empty((1, pixels.shape[2], *pixels.shape[:2]), dtype=np.float32)
    tensor[0] = pixels.transpose(2, 0, 1)
    tensor[0] *= factor
    tensor[0] -= offset
    return tensor, placement


def _in_color_order(image: npt.NDArray[np.uint8], color: str) -> npt.NDArray[np.uint8]:
    """An OpenCV image (BGR, BGRA or gray) as H x W x C in the model's colour order."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        if color == "GRAY":
            return image[:, :, np.newaxis]
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.shape[2] == 4:
        image = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    if color == "RGB":
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)
    if color == "GRAY":
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), dtype=np.uint8)[:, :, None]
    return image
