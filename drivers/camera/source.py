"""`open_camera`: the one place that turns a camera's configuration into a source, and the
protocol every source keeps."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from drivers.camera.capture import CaptureCamera
from drivers.camera.folder import FolderReplayCamera, TriggeredFolderCamera
from drivers.camera.frames import CameraHealth, Frame, InvalidCameraSource

__all__ = ["CameraSource", "open_camera"]

_STREAM_URL = re.compile(r"^(rtsp|rtsps|http|https)://\S+$", re.IGNORECASE)


class CameraSource(Protocol):
    """A camera as the stations see it. `start()` and `stop()` may be called more than once;
    neither waits for the camera (stop waits only for its thread)."""

    @property
    def name(self) -> str:
        """The camera's name in the configuration."""

    def start(self) -> None:
        """Begin delivering frames (a grabber thread opens the camera; nothing blocks)."""

    def stop(self) -> None:
        """Stop delivering frames and end the camera's thread, if it has one."""

    async def frame_after(self, after_monotonic: float, timeout: float) -> Frame:  # noqa: ASYNC109
        """The first frame captured at or after `after_monotonic` (time.monotonic()), waiting
        at most `timeout` seconds; raises CameraUnavailable with the reason otherwise."""

    def latest(self) -> Frame | None:
        """The newest frame, or None before the first."""

    def health(self) -> CameraHealth:
        """State, since when, frames, reconnects, the latest error and the measured fps."""

    def describe(self) -> str:
        """Which camera this is, for messages."""


def open_camera(
    name: str,
    source: int | str,
    *,
    folder: Path | None = None,
    fps: float | None = None,
    loop: bool = True,
    width: int | None = None,
    height: int | None = None,
    reconnect_max: float = 10.0,
    open_timeout: float = 5.0,
    latency: float = 0.0,
) -> CameraSource:
    """The source for one camera; does no I/O (call `start()` for that).

    With `folder`, the folder's images (and `source` is not used): fps None gives one image per
    `frame_after` call, fps set replays them at that rate; `loop` repeats them. Otherwise an
    OpenCV device index (an int, or a string of digits) or an rtsp(s):// or http(s):// URL;
    `fps` is then asked of a device and ignored for a URL. `width` and `height` resize every
    frame (one of them alone keeps the aspect ratio); a device is asked for that size first.
    A camera that sends no frame for `open_timeout` seconds is lost and reopened, with backoff
    up to `reconnect_max` seconds. `latency` (device or URL): how long after its capture a frame
    arrives; frames are stamped that much earlier. Raises InvalidCameraSource for a source of
    no known kind.
    """
    for label, value in (
        ("fps", fps),
        ("reconnect_max", reconnect_max),
        ("open_timeout", open_timeout),
    ):
        if value is not None and value <= 0:
            raise InvalidCameraSource(f"camera {name!r}: {label} must be positive, not {value}")
    for label, size in (("width", width), ("height", height)):
        if size is not None and size <= 0:
            raise InvalidCameraSource(f"camera {name!r}: {label} must be positive, not {size}")
    if folder is not None:
        if fps is None:
            return TriggeredFolderCamera(
                name, folder, loop=loop, width=width, height=height, reconnect_max=reconnect_max
            )
        return FolderReplayCamera(
            name,
            folder,
            fps=fps,
            loop=loop,
            width=width,
            height=height,
            reconnect_max=reconnect_max,
        )
    if isinstance(source, str) and source.strip().isdigit():
        source = int(source.strip())
    if isinstance(source, bool) or (isinstance(source, int) and source < 0):
        raise InvalidCameraSource(f"camera {name!r}: {source!r} is not a device index")
    if isinstance(source, str) and not _STREAM_URL.match(source):
        raise InvalidCameraSource(
            f"camera {name!r}: {source!r} is neither a device index, nor an rtsp://, rtsps://, "
            "http:// or https:// URL; a folder of images is given with folder:"
        )
    return CaptureCamera(
        name,
        source,
        width=width,
        height=height,
        fps=fps,
        reconnect_max=reconnect_max,
        open_timeout=open_timeout,
        latency=latency,
    )
