"""Cameras that replay a folder of images, in name order: for replaying production images, for
tests and for the demo.

`TriggeredFolderCamera` (no fps) gives the next image on every `frame_after` call, as a camera
triggered by the part's arrival would. `FolderReplayCamera` (fps) plays the images at that rate
from a grabber thread, like a free-running camera: a slow reader sees the newest one.
The folder is read again at every pass, so images added to it are picked up; files that are
not images are ignored, and images that cannot be decoded are skipped with a warning (once per
file)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.model import now_ms
from drivers.base import LinkState
from drivers.camera.base import CameraBase, GrabberCamera, backoff_delay
from drivers.camera.frames import CameraUnavailable, Frame, Image, as_bgr, fit_size

__all__ = ["FolderReplayCamera", "ImageFolder", "TriggeredFolderCamera"]

log = logging.getLogger("drivers.camera")

IMAGE_SUFFIXES = frozenset(
    {".bmp", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".pnm", ".ppm", ".tif", ".tiff", ".webp"}
)


class ImageFolder:
    """The images of a folder, listed and decoded; warns once about each unreadable file."""

    def __init__(self, path: Path, describe: str) -> None:
        self.path = path
        self._describe = describe
        self._warned: set[Path] = set()

    def scan(self) -> list[Path] | str:
        """The image files in name order (hidden files skipped), or why there are none."""
        try:
            files = sorted(
                entry
                for entry in self.path.iterdir()
                if entry.suffix.lower() in IMAGE_SUFFIXES
                and not entry.name.startswith(".")
                and entry.is_file()
            )
        except FileNotFoundError:
            return f"the folder {self.path} does not exist"
        except NotADirectoryError:
            return f"{self.path} is not a folder"
        except OSError as exc:
            return f"the folder {self.path} cannot be read: {exc.strerror or exc}"
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            return f"the folder {self.path} holds no images ({suffixes})"
        return files

    def read(self, path: Path) -> Image | None:
        """The image as BGR, or None (with a warning the first time) if it cannot be read."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._warn(path, f"it cannot be read: {exc.strerror or exc}")
            return None
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        image = as_bgr(decoded)
        if image is None:
            self._warn(path, "it is not an image OpenCV can decode")
            return None
        self._warned.discard(path)
        return image

    def _warn(self, path: Path, reason: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("The %s skips %s: %s.", self._describe, path.name, reason)


class FolderReplayCamera(GrabberCamera):
    """Plays a folder's images at `fps` from a grabber thread, once or looping."""

    def __init__(
        self,
        name: str,
        folder: Path,
        *,
        fps: float,
        loop: bool = True,
        width: int | None = None,
        height: int | None = None,
        reconnect_max: float = 10.0,
    ) -> None:
        super().__init__(name, f"folder {folder} at {fps:g} fps", reconnect_max=reconnect_max)
        self.folder = ImageFolder(folder, self.describe())
        self.fps = fps
        self.loop = loop
        self.width = width
        self.height = height

    def _grab(self, stopping: threading.Event) -> None:
        period = 1.0 / self.fps
        next_at = time.monotonic()
        attempt = 0
        while not stopping.is_set():
            files = self.folder.scan()
            delivered = 0
            if isinstance(files, list):
                for path in files:
                    image = self.folder.read(path)
                    if image is None:
                        continue
                    image = fit_size(image, self.width, self.height)
                    if stopping.wait(max(0.0, next_at - time.monotonic())):
                        return
                    # After a slow read, keep the rate from here rather than catch up in a burst.
                    next_at = max(next_at + period, time.monotonic())
                    self._deliver(image)
                    delivered += 1
                if delivered and not self.loop:
                    self._mark_lost(
                        f"all {len(files)} images were replayed (loop is off)",
                        finished=True,
                    )
                    return
                if not delivered:
                    files = f"none of the {len(files)} images in {self.folder.path} can be read"
            if isinstance(files, str):
                self._mark_lost(files)
                if stopping.wait(backoff_delay(attempt, self.reconnect_max)):
                    return
                attempt += 1
                next_at = time.monotonic()
            else:
                attempt = 0


@dataclass(frozen=True, slots=True)
class _NoImage:
    reason: str
    finished: bool = False


class TriggeredFolderCamera(CameraBase):
    """Gives the folder's next image on every `frame_after` call, in name order, looping if
    `loop`; no thread of its own (the file is read in a worker thread)."""

    def __init__(
        self,
        name: str,
        folder: Path,
        *,
        loop: bool = True,
        width: int | None = None,
        height: int | None = None,
        reconnect_max: float = 10.0,
    ) -> None:
        super().__init__(
            name, f"folder {folder}, one image per trigger", reconnect_max=reconnect_max
        )
        self.folder = ImageFolder(folder, self.describe())
        self.loop = loop
        self.width = width
        self.height = height
        self._order_lock = threading.Lock()
        self._files: list[Path] = []
        self._next = 0
        self._passes = 0
        self._started = False
        self._last_rescan = 0.0

    def start(self) -> None:
        """Allow frames; the folder is first read at the first `frame_after`."""
        if not self._started:
            self._started = True
            self._set_running(True)
            if self._has_readable_image():
                # Nothing to connect to: a folder with images can serve the first trigger.
                with self._lock:
                    self._health.state = LinkState.CONNECTED
                    self._health.since_ms = now_ms()

    def stop(self) -> None:
        """Refuse frames from now on (the replay position is kept)."""
        if self._started:
            self._started = False
            self._set_running(False)

    @property
    def running(self) -> bool:
        """Whether start() was called and stop() was not."""
        return self._started

    def _check_stall(self) -> None:
        """A folder that had no readable image is looked at again (at most once a second), so
        that a station waiting to be ready sees the images come back without a trigger."""
        if not self._started or self._health.state == LinkState.CONNECTED:
            return
        if self._passes and not self.loop:
            return  # a replay that has finished stays finished
        now = time.monotonic()
        if now - self._last_rescan < 1.0:
            return
        self._last_rescan = now
        if self._has_readable_image():
            with self._lock:
                self._health.state = LinkState.CONNECTED
                self._health.since_ms = now_ms()

    def _has_readable_image(self) -> bool:
        """Whether one of the folder's first few images can be decoded."""
        files = self.folder.scan()
        return isinstance(files, list) and any(
            self.folder.read(path) is not None for path in files[:5]
        )

    def _retry_note(self) -> str:
        return "The folder is read again at the next trigger."

    # `timeout` is part of the contract: each station waits its own frame_timeout per trigger.
    async def frame_after(self, after_monotonic: float, timeout: float) -> Frame:  # noqa: ASYNC109
        """The folder's next image, as a frame captured now (after waiting until
        `after_monotonic` if that lies ahead). Raises CameraUnavailable when stopped, when the
        folder has no readable image, or when a loop-less replay has finished."""
        if not self._started:
            raise CameraUnavailable(f"the {self.describe()} is not started")
        deadline = time.monotonic() + timeout
        ahead = after_monotonic - time.monotonic()
        if ahead > timeout:
            await asyncio.sleep(timeout)
            raise CameraUnavailable(
                f"the {self.describe()} delivered no frame within {timeout:g} s"
            )
        if ahead > 0:
            await asyncio.sleep(ahead)
        try:
            # asyncio.timeout, not wait_for, which can swallow a cancellation on Python 3.11.
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                image = await asyncio.to_thread(self._next_image)
        except TimeoutError:
            raise self._unavailable(timeout) from None
        if isinstance(image, _NoImage):
            self._mark_lost(image.reason, finished=image.finished)
            raise CameraUnavailable(f"the {self.describe()} is unavailable: {image.reason}")
        return self._deliver(fit_size(image, self.width, self.height))

    def _next_image(self) -> Image | _NoImage:
        """The next readable image, or why there is none."""
        with self._order_lock:
            skipped = 0
            while True:
                if self._next >= len(self._files):
                    if self._passes and not self.loop:
                        return _NoImage(
                            f"all {len(self._files)} images were replayed (loop is off)",
                            finished=True,
                        )
                    files = self.folder.scan()
                    if isinstance(files, str):
                        return _NoImage(files)
                    self._files, self._next = files, 0
                    self._passes += 1
                path = self._files[self._next]
                self._next += 1
                image = self.folder.read(path)
                if image is not None:
                    return image
                skipped += 1
                if skipped >= len(self._files):
                    return _NoImage(
                        f"none of the {len(self._files)} images in {self.folder.path} can be read"
                    )
