"""Pre-processing: letterbox and ROI geometry round trips, colour order, scale, mean and std."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.session import ModelDescription
from inference.vision.adapters import load_vision_model
from inference.vision.preprocess import Placement, letterbox, prepare
from tests.onnx_graphs import channel_mean_classifier


@pytest.fixture(scope="module")
def description(tmp_path_factory: pytest.TempPathFactory) -> ModelDescription:
    """A real description (from a loaded model) that tests adjust with dataclasses.replace."""
    path = channel_mean_classifier(tmp_path_factory.mktemp("models") / "colour.onnx")
    return load_vision_model(path, threads=1).description


def _with(description: ModelDescription, **changes: object) -> ModelDescription:
    return dataclasses.replace(description, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "placement",
    [
        Placement(1.0, 1.0, 0.0, 0.0, 0.0, 0.0),
        Placement(0.8, 0.8, 0.0, 40.0, 120.0, 90.0),
        Placement(0.5, 2.0, 3.0, 0.0, 7.0, 11.0),
    ],
)
def test_placement_round_trips(placement: Placement) -> None:
    for x, y in [(0.0, 0.0), (12.5, 300.25), (319.0, 1.0)]:
        assert placement.to_input(*placement.to_frame(x, y)) == pytest.approx((x, y))
        assert placement.to_frame(*placement.to_input(x, y)) == pytest.approx((x, y))


def test_letterbox_scales_to_fit_and_pads_evenly() -> None:
    image = np.full((300, 400, 3), 200, dtype=np.uint8)
    boxed, scale, pad_x, pad_y = letterbox(image, 320, 320, 114)
    assert boxed.shape == (320, 320, 3)
    assert scale == pytest.approx(0.8)
    assert (pad_x, pad_y) == (0.0, 40.0)
    assert (boxed[:40] == 114).all() and (boxed[280:] == 114).all()
    assert (boxed[40:280] == 200).all()


def test_letterbox_of_a_tall_gray_image_pads_left_and_right() -> None:
    image = np.full((200, 100), 9, dtype=np.uint8)
    boxed, scale, pad_x, pad_y = letterbox(image, 64, 64, 0)
    assert boxed.shape == (64, 64)
    assert scale == pytest.approx(0.32)
    assert (pad_x, pad_y) == (16.0, 0.0)
    assert (
        (boxed[:, :16] == 0).all() and (boxed[:, 16:48] == 9).all() and (boxed[:, 48:] == 0).all()
    )


def _bright_box(tensor: np.ndarray) -> tuple[int, int, int, int]:
    """The bounding box (x1, y1, x2, y2; edges) of the bright pixels of channel 0."""
    rows, cols = np.nonzero(tensor[0, 0] > 0.5)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


@pytest.mark.parametrize(
    ("resize", "imgsz"),
    [("letterbox", (320, 320)), ("letterbox", (256, 320)), ("stretch", (160, 240))],
)
def test_a_box_drawn_on_the_frame_comes_back_at_the_same_frame_coordinates(
    description: ModelDescription, resize: str, imgsz: tuple[int, int]
) -> None:
    model = _with(description, resize=resize, imgsz=imgsz, mean=(0.0,), std=(1.0,), pad_value=0)
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    drawn = (250, 180, 330, 240)  # x1, y1, x2, y2 (edges)
    cv2.rectangle(frame, drawn[:2], (drawn[2] - 1, drawn[3] - 1), (255, 255, 255), -1)
    roi_x, roi_y, roi_w, roi_h = 120, 90, 400, 300
    crop = frame[roi_y : roi_y + roi_h, roi_x : roi_x + roi_w]
    tensor, placement = prepare(crop, model, roi_origin=(roi_x, roi_y))
    x1, y1, x2, y2 = _bright_box(tensor)
    assert placement.to_frame(x1, y1) == pytest.approx(drawn[:2], abs=1.0)
    assert placement.to_frame(x2, y2) == pytest.approx(drawn[2:], abs=1.0)
    # And the other way: the drawn corners land on the bright pixels' edges.
    assert placement.to_input(*drawn[:2]) == pytest.approx((x1, y1), abs=1.0)
    assert placement.to_input(*drawn[2:]) == pytest.approx((x2, y2), abs=1.0)


def test_letterbox_placement_matches_the_geometry(description: ModelDescription) -> None:
    model = _with(description, resize="letterbox", imgsz=(320, 320))
    crop = np.zeros((300, 400, 3), dtype=np.uint8)
    _, placement = prepare(crop, model, roi_origin=(100, 50))
    assert placement == Placement(0.8, 0.8, 0.0, 40.0, 100, 50)
    # The crop's corners: the top-left of the padded content and its bottom-right.
    assert placement.to_input(100, 50) == (0.0, 40.0)
    assert placement.to_input(500, 350) == pytest.approx((320.0, 280.0))


def test_tensor_is_nchw_float32_contiguous(description: ModelDescription) -> None:
    tensor, _ = prepare(np.zeros((48, 64, 3), dtype=np.uint8), description)
    assert tensor.shape == (1, 3, 32, 32)
    assert tensor.dtype == np.float32
    assert tensor.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(
    ("color", "expected"),
    [("RGB", [30, 20, 10]), ("BGR", [10, 20, 30]), ("GRAY", [22])],
)
def test_colour_order(description: ModelDescription, color: str, expected: list[int]) -> None:
    model = _with(description, color=color, scale=1.0, mean=(0.0,), std=(1.0,))
    crop = np.empty((8, 8, 3), dtype=np.uint8)
    crop[:] = (10, 20, 30)  # B, G, R
    tensor, _ = prepare(crop, model)
    assert tensor.shape[1] == len(expected)
    # GRAY: OpenCV's 0.299 R + 0.587 G + 0.114 B = 22.
    assert tensor[0, :, 4, 4].tolist() == pytest.approx(expected, abs=0.5)


def test_gray_frame_feeds_a_colour_model_equal_channels(description: ModelDescription) -> None:
    crop = np.full((10, 10), 51, dtype=np.uint8)
    model = _with(description, scale=1 / 255, mean=(0.0,), std=(1.0,))
    tensor, _ = prepare(crop, model)
    assert tensor[0, :, 3, 3].tolist() == pytest.approx([0.2, 0.2, 0.2])


def test_scale_mean_and_std_per_channel(description: ModelDescription) -> None:
    crop = np.empty((8, 8, 3), dtype=np.uint8)
    crop[:] = (0, 128, 255)  # B, G, R -> RGB 255, 128, 0
    tensor, _ = prepare(crop, description)  # ImageNet mean/std, RGB, 1/255
    rgb = np.array([255, 128, 0]) / 255
    expected = (rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert tensor[0, :, 2, 2].tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_letterbox_padding_is_normalised_like_pixels(description: ModelDescription) -> None:
    model = _with(description, resize="letterbox", pad_value=114, mean=(0.5,), std=(0.25,))
    tensor, _ = prepare(np.zeros((16, 32, 3), dtype=np.uint8), model)
    assert tensor[0, 0, 0, 0] == pytest.approx((114 / 255 - 0.5) / 0.25, rel=1e-5)
    assert tensor[0, 0, 16, 16] == pytest.approx(-2.0)


def test_an_empty_crop_is_refused(description: ModelDescription) -> None:
    with pytest.raises(ValueError, match="empty"):
        prepare(np.zeros((0, 10, 3), dtype=np.uint8), description)


def test_prepare_works_on_non_contiguous_crops(
    description: ModelDescription, tmp_path: Path
) -> None:
    frame = np.random.default_rng(1).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    crop = frame[10:60, 20:90]
    assert not crop.flags["C_CONTIGUOUS"]
    first, _ = prepare(crop, description)
    second, _ = prepare(np.ascontiguousarray(crop), description)
    assert np.array_equal(first, second)
