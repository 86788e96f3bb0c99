"""What every camera source hands out (`Frame`, `CameraHealth`, `CameraUnavailable`) and the
shared parts they are built from: the newest-frame slot that event-loop tasks wait on, the
frame-rate meter and the image helpers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar, cast

import cv2
import numpy as np
from numpy.typing import NDArray

from drivers.base import DriverError, LinkState

__all__ = [
    "CameraHealth",
    "CameraUnavailable",
    "Frame",
    "FrameRateMeter",
    "FrameSlot",
    "Image",
    "InvalidCameraSource",
    "as_bgr",
    "fit_size",
]

Image: TypeAlias = NDArray[np.uint8]
T = TypeVar("T")


class CameraUnavailable(DriverError):
    """No frame could be had: the camera is lost, stopped, or sent nothing within the timeout."""


class InvalidCameraSource(ValueError):
    """A camera source that no camera type understands (a configuration error)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One image from a camera.

    `image` is BGR uint8 (height x width x 3). `monotonic` is `time.monotonic()` when the frame
    was captured, never later (frames a stream had buffered before the agent read them carry the
    time the connection was opened); `ts_ms` is the same moment on the wall clock. `seq` grows by
    one for every frame a camera delivers, across reconnects.
    """

    image: Image
    ts_ms: int
    monotonic: float
    seq: int


@dataclass(slots=True)
class CameraHealth:
    """Where a camera stands: link state and since when (wall-clock ms), frames delivered,
    reconnects after a loss, the latest error, and the frame rate measured over the last
    few seconds."""

    state: LinkState
    since_ms: int
    frames: int = 0
    reconnects: int = 0
    last_error: str | None = None
    fps: float = 0.0


class FrameRateMeter:
    """Frames per second over a sliding window; not thread-safe (callers hold their lock)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def add(self, monotonic: float) -> None:
        """Count a frame that arrived at `monotonic`."""
        self._times.append(monotonic)
        self._forget_before(monotonic - self.window_s)

    def rate(self, now: float | None = None) -> float:
        """Frames per second over the window (0.0 when fewer than two frames are in it)."""
        self._forget_before((time.monotonic() if now is None else now) - self.window_s)
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def clear(self) -> None:
        """Forget every frame (the camera was lost)."""
        self._times.clear()

    def _forget_before(self, limit: float) -> None:
        while self._times and self._times[0] < limit:
            self._times.popleft()


@dataclass(slots=True)
class _Waiter:
    after: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Frame]


def _resolve(future: asyncio.Future[Frame], frame: Frame) -> None:
    if not future.done():
        future.set_result(frame)


def _reject(future: asyncio.Future[Frame], reason: str) -> None:
    if not future.done():
        future.set_exception(CameraUnavailable(reason))


class FrameSlot:
    """Holds only the newest frame. A grabber thread `publish()`es into it; tasks on any event
    loop `wait_after()` a moment without blocking their loop: each waiter is an asyncio future
    that the grabber completes through `loop.call_soon_threadsafe`, so no executor thread is
    tied up while a station waits for its frame."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._waiters: list[_Waiter] = []

    @property
    def newest(self) -> Frame | None:
        """The newest frame, or None before the first."""
        return self._frame

    def publish(self, frame: Frame) -> None:
        """Replace the newest frame and hand it to every waiter it satisfies (any thread)."""
        with self._lock:
            self._frame = frame
            ready = [waiter for waiter in self._waiters if frame.monotonic >= waiter.after]
            if ready:
                self._waiters = [w for w in self._waiters if frame.monotonic < w.after]
        for waiter in ready:
            _call_in_loop(waiter.loop, _resolve, waiter.future, frame)

    def fail_waiters(self, reason: str) -> None:
        """Make every pending `wait_after()` raise `CameraUnavailable(reason)` (any thread)."""
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _call_in_loop(waiter.loop, _reject, waiter.future, reason)

    async def wait_after(self, after_monotonic: float, timeout: float) -> Frame:  # noqa: ASYNC109
        """The newest frame if it was captured at or after `after_monotonic`, else the next one
        that is; raises TimeoutError after `timeout` seconds, CameraUnavailable on a loss."""
        loop = asyncio.get_running_loop()
        with self._lock:
            frame = self._frame
            if frame is not None and frame.monotonic >= after_monotonic:
                return frame
            waiter = _Waiter(after_monotonic, loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that arrives with the frame, and a station would then never stop.
            async with asyncio.timeout(timeout):
                return await waiter.future
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(waiter)


def _call_in_loop(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[asyncio.Future[Frame], T], None],
    future: asyncio.Future[Frame],
    argument: T,
) -> None:
    # The waiter's loop may have closed while it waited (its program ended): nothing to wake.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, future, argument)


def as_bgr(image: object) -> Image | None:
    """The image as BGR uint8 height x width x 3, converting gray, BGRA and 16-bit images;
    None when it is not an image at all."""
    if not isinstance(image, np.ndarray) or image.size == 0:
        return None
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        return None
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cast(Image, cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    if image.ndim == 3 and image.shape[2] == 4:
        return cast(Image, cv2.cvtColor(image, cv2.COLOR_BGRA2BGR))
    if image.ndim == 3 and image.shape[2] == 3:
        return cast(Image, image)
    return None


def fit_size(image: Image, width: int | None, height: int | None) -> Image:
    """The image resized to width x height; with only one of them given, the other follows
    the image's aspect ratio; with neither, the image as it is."""
    if width is None and height is None:
        return image
    rows, cols = image.shape[:2]
    if width is None:
        width = max(1, round(cols * (height or rows) / rows))
    if height is None:
        height = max(1, round(rows * width / cols))
    if (cols, rows) == (width, height):
        return image
    shrinking = width * height < cols * rows
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cast(Image, cv2.resize(image, (width, height), interpolation=interpolation))
