"""Cameras that OpenCV opens: a local device by index, or an RTSP / HTTP(S) stream by URL.

The grabber thread opens the camera (which can block for seconds inside FFmpeg, so never in the
caller), reads every frame as it comes and keeps only the newest, so a slow model never works on
a stale image. A camera that fails to open, ends its stream or sends nothing for `open_timeout`
is lost: it is released and opened again with exponential backoff (full jitter) up to
`reconnect_max`.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import cv2

from agent.model import now_ms
from drivers.base import backoff_delay
from drivers.camera.base import GrabberCamera
from drivers.camera.frames import as_bgr, fit_size

__all__ = ["CaptureCamera", "mask_credentials"]

# Consecutive failed reads after which a stream counts as ended (FFmpeg returns at once, again
# and again, once the server closed the connection).
_FAILED_READS = 3
# Right after opening, FFmpeg hands out the frames it buffered while probing the stream, each in
# well under a millisecond; a read that returns this fast within the opening burst gave such an
# older frame. It is dated to the moment the open began (never later than its capture), so that
# `frame_after(trigger)` does not take an image from before the trigger for a fresh one.
_BUFFERED_READ_S = 0.005
_MAX_BURST_FRAMES = 30
_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}

_opencv_quieted = False


def mask_credentials(url: str) -> str:
    """The URL with its password replaced by ***, for logs and health."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _quiet_opencv() -> None:
    """Keep OpenCV and FFmpeg from printing every failed open to stderr.

    With a camera down for a night, each retry would print "Connection refused" and "backend is
    generally available but can't be used to capture by name" to the journal; the camera logs
    the reason once itself. A user who wants FFmpeg's messages sets OPENCV_FFMPEG_LOGLEVEL.
    """
    global _opencv_quieted  # noqa: PLW0603 (once per process)
    if _opencv_quieted:
        return
    _opencv_quieted = True
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read on first use
    if cv2.utils.logging.getLogLevel() == cv2.utils.logging.LOG_LEVEL_WARNING:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class CaptureCamera(GrabberCamera):
    """An OpenCV device (`source` an int) or an rtsp(s):// or http(s):// stream."""

    def __init__(
        self,
        name: str,
        source: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        reconnect_max: float = 10.0,
        open_timeout: float = 5.0,
        latency: float = 0.0,
    ) -> None:
        where = f"video device {source}" if isinstance(source, int) else mask_credentials(source)
        super().__init__(name, where, reconnect_max=reconnect_max)
        self.source = source
        self.width = width
        self.height = height
        self.fps = fps
        self.open_timeout = open_timeout
        # How long after its capture a frame arrives (a stream's encoder and buffers): frames
        # are stamped that much earlier, so that none taken before a trigger passes as after.
        self.latency = latency
        # A read blocked inside OpenCV returns after open_timeout (FFmpeg's read timeout).
        self.join_timeout_s = open_timeout + 1.0

    def _check_stall(self) -> None:
        # A backend without a read timeout (a V4L2 device) can block in read() for long; the
        # caller's side notices that no frame came for open_timeout.
        self._mark_lost(
            f"it sent no frame for {self.open_timeout:g} s", stale_for=self.open_timeout
        )

    def _grab(self, stopping: threading.Event) -> None:
        attempt = 0
        while not stopping.is_set():
            open_started, open_started_ms = time.monotonic(), now_ms()
            capture = self._open()
            if capture is None:
                if time.monotonic() - open_started >= 0.9 * self.open_timeout:
                    reason = f"it did not answer within {self.open_timeout:g} s"
                else:
                    reason = self._why_not_opened()
                self._mark_lost(reason)
            else:
                try:
                    if self._read_frames(capture, stopping, open_started, open_started_ms):
                        attempt = 0
                finally:
                    capture.release()
            if stopping.wait(backoff_delay(attempt, self.reconnect_max)):
                return
            attempt += 1

    def _open(self) -> cv2.VideoCapture | None:
        _quiet_opencv()
        if isinstance(self.source, int):
            capture = cv2.VideoCapture(self.source, cv2.CAP_ANY)
        else:
            timeout_ms = round(self.open_timeout * 1000)
            capture = cv2.VideoCapture(
                self.source,
                cv2.CAP_FFMPEG,
                [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    timeout_ms,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    timeout_ms,
                ],
            )
        if not capture.isOpened():
            capture.release()
            return None
        # Not every backend honours these (FFmpeg ignores the buffer size): the grabber reads
        # continuously anyway, so at most what the backend buffers internally is ever stale.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if isinstance(self.source, int):
            if self.width is not None:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height is not None:
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps is not None:
                capture.set(cv2.CAP_PROP_FPS, self.fps)
        return capture

    def _read_frames(
        self,
        capture: cv2.VideoCapture,
        stopping: threading.Event,
        open_started: float,
        open_started_ms: int,
    ) -> int:
        """Read until the stream breaks off or the camera stops; returns frames delivered."""
        delivered = 0
        failed_reads = 0
        last_good = time.monotonic()
        in_burst = True
        while not stopping.is_set():
            read_started = time.monotonic()
            ok, raw = capture.read()
            returned = time.monotonic()
            if stopping.is_set():
                break
            image = as_bgr(raw) if ok else None
            if image is None:
                failed_reads += 1
                silent_for = returned - last_good
                if silent_for >= self.open_timeout:
                    self._mark_lost(f"it sent no frame for {silent_for:.1f} s")
                    break
                if failed_reads >= _FAILED_READS:
                    self._mark_lost(self._why_reads_fail(ok))
                    break
                continue
            failed_reads = 0
            last_good = returned
            in_burst = (
                in_burst
                and delivered < _MAX_BURST_FRAMES
                and returned - read_started < _BUFFERED_READ_S
            )
            image = fit_size(image, self.width, self.height)
            if in_burst:
                self._deliver(
                    image,
                    captured=open_started - self.latency,
                    captured_ms=open_started_ms - round(self.latency * 1000),
                )
            elif self.latency:
                self._deliver(
                    image,
                    captured=time.monotonic() - self.latency,
                    captured_ms=now_ms() - round(self.latency * 1000),
                )
            else:
                self._deliver(image)
            delivered += 1
        return delivered

    def _why_reads_fail(self, ok: bool) -> str:
        if ok:
            return "it sends images OpenCV cannot convert to BGR"
        if isinstance(self.source, int):
            return "the device stopped giving images (unplugged, or opened by another program?)"
        return "the stream ended (the camera closed the connection or stopped sending)"

    def _why_not_opened(self) -> str:
        """Find out, as far as we can, why OpenCV could not open the camera (OpenCV says
        only no): for a URL, whether the host resolves and the port takes connections.
        Called when OpenCV gave up early, so the camera's host answered something."""
        if isinstance(self.source, int):
            device = f"/dev/video{self.source}"
            if sys.platform.startswith("linux") and not os.path.exists(device):
                return f"OpenCV cannot open it: {device} does not exist (is the camera plugged in?)"
            return (
                "OpenCV cannot open it (is it plugged in, not used by another program, and "
                "readable by this user?)"
            )
        parts = urlsplit(self.source)
        host = parts.hostname or ""
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        except ValueError:
            return "the URL's port is not a number"
        probe_timeout = min(self.open_timeout, 2.0)
        try:
            with socket.create_connection((host, port), timeout=probe_timeout):
                pass
        except socket.gaierror:
            return f"the host name {host!r} cannot be resolved"
        except ConnectionRefusedError:
            return f"{host}:{port} refused the connection (is the camera on, the port right?)"
        except TimeoutError:
            return f"{host}:{port} did not answer within {probe_timeout:g} s"
        except OSError as exc:
            return f"{host}:{port} cannot be reached: {exc.strerror or exc}"
        return (
            f"{host}:{port} takes connections but OpenCV could not open the stream there "
            "(check the path, the credentials and that it is an RTSP, MJPEG or similar stream)"
        )
