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
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.model import now_ms
from drivers.base import LinkState, backoff_delay
from drivers.camera.base import CameraBase, GrabberCamera
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
        # Read by more than one thread (a read-ahead and a readiness check): one warning each.
        self._warned_lock = threading.Lock()
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
        with self._warned_lock:
            self._warned.discard(path)
        return image

    def _warn(self, path: Path, reason: str) -> None:
        with self._warned_lock:
            if path in self._warned:
                return
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


@dataclass(frozen=True, slots=True)
class _Cursor:
    """Where a triggered replay stands: this pass's files, the index of the next one to read and
    the passes begun."""

    files: tuple[Path, ...] = ()
    next: int = 0
    passes: int = 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one read gave, with the cursor before and after it, so that a read nobody used can
    be undone."""

    image: Image | _NoImage
    before: _Cursor
    after: _Cursor


def _lower_priority() -> None:
    """Make the calling thread yield the CPU to the agent's other threads (Linux: a thread's
    own nice value); where that is not possible it just runs at the normal priority."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # not when its wait was cancelled (timed out) meanwhile
        waiter.set_result(None)


class _Read:
    """One read of the folder's next image, run in the event loop's worker threads; its outcome
    can be waited for from any thread or event loop."""

    def __init__(self, read: Callable[[], _Outcome]) -> None:
        self.future: Future[_Outcome] = Future()
        self._read = read

    def run(self) -> None:
        """Do the read (in a worker thread)."""
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            outcome = self._read()
        except Exception as exc:  # noqa: BLE001 (a bug: raised to whoever awaits the read)
            self.future.set_exception(exc)
        else:
            self.future.set_result(outcome)

    async def outcome(self) -> _Outcome:
        """The read's outcome, waiting for it without blocking the event loop (at once if the
        read is done)."""
        if not self.future.done():
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def done(_: Future[_Outcome]) -> None:
                with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                    loop.call_soon_threadsafe(_wake, waiter)

            self.future.add_done_callback(done)
            await waiter
        return self.future.result()


class TriggeredFolderCamera(CameraBase):
    """Gives the folder's next image on every `frame_after` call, in name order, looping if
    `loop`.

    The next image is read ahead: after each frame (and at start(), when called in an event
    loop) the camera's reader thread reads and decodes the one after it, so that a trigger finds
    it ready. That thread runs at a lower CPU priority (nice +10): on a two-core gateway the
    decode would otherwise take a core from the inspection running meanwhile, and delay it by
    the decode's time (measured: 2.8 ms per inspection). One image at most is read ahead, so a
    change to the folder shows one image later than it would without; the frame is stamped
    when `frame_after` hands it out, never when it was decoded. A read that fails is not kept:
    the next trigger looks at the folder again. stop() waits for a read in progress and ends
    the reader thread.
    """

    # How long stop() waits for a read in progress; reading from a hung network share may block.
    join_timeout_s = 2.0

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
        self._order_lock = threading.Lock()  # one read at a time moves the cursor
        self._cursor = _Cursor()
        # Guards _started, _ahead and _reads: stop() may run on another thread than triggers.
        self._reads_lock = threading.Lock()
        self._started = False
        self._ahead: _Read | None = None  # the read-ahead nobody has taken yet
        self._reads: list[_Read] = []  # reads that may still run, for stop() to wait on
        self._last_rescan = 0.0
        self._reader: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Allow frames and read the first image ahead; the camera counts as connected at once
        if one of the folder's first images can be decoded."""
        with self._reads_lock:
            if self._started:
                return
            self._started = True
            self._reader = ThreadPoolExecutor(
                1, thread_name_prefix=f"camera-{self.name}-reader", initializer=_lower_priority
            )
        self._set_running(True)
        self._read_ahead()
        if self._has_readable_image():
            # Nothing to connect to: a folder with images can serve the first trigger.
            with self._lock:
                self._health.state = LinkState.CONNECTED
                self._health.since_ms = now_ms()

    def stop(self) -> None:
        """Refuse frames from now on and wait for a read in progress; the image read ahead is
        dropped and the replay resumes with it after start()."""
        with self._reads_lock:
            if not self._started:
                return
            self._started = False
            ahead, self._ahead = self._ahead, None
            reads, self._reads = self._reads, []
            reader, self._reader = self._reader, None
        self._set_running(False)
        if ahead is not None:
            ahead.future.cancel()  # if no worker thread has begun it (else it is waited for)
        _done, running = wait_futures([read.future for read in reads], self.join_timeout_s)
        if reader is not None:
            reader.shutdown(wait=not running)
        if ahead is not None:
            self._drop(ahead)
        if running:
            log.warning(
                "A read of the %s did not end within %g s (the file system is slow to answer); "
                "it ends on its own when the read returns.",
                self.describe(),
                self.join_timeout_s,
            )

    @property
    def running(self) -> bool:
        """Whether start() was called and stop() was not."""
        return self._started

    def _check_stall(self) -> None:
        """A folder that had no readable image is looked at again (at most once a second), so
        that a station waiting to be ready sees the images come back without a trigger."""
        if not self._started or self._health.state == LinkState.CONNECTED:
            return
        if self._cursor.passes and not self.loop:
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
                image = (await self._next_outcome()).image
        except TimeoutError:
            raise self._unavailable(timeout) from None
        if isinstance(image, _NoImage):
            self._mark_lost(image.reason, finished=image.finished)
            raise CameraUnavailable(f"the {self.describe()} is unavailable: {image.reason}")
        frame = self._deliver(image)  # stamped now: the image counts as taken at the trigger
        self._read_ahead()
        return frame

    async def _next_outcome(self) -> _Outcome:
        """The image read ahead if there is one (unless reading it failed), else a fresh read."""
        with self._reads_lock:
            read, self._ahead = self._ahead, None
        if read is not None:
            outcome = await self._wait_keeping(read)
            if not isinstance(outcome.image, _NoImage) or outcome.image.finished:
                return outcome
            # The folder was unusable when read ahead; look again now, as a trigger would.
            self._undo(outcome)
        read = self._start_read()
        if read is None:
            raise CameraUnavailable(f"the {self.describe()} is not started")
        return await self._wait_keeping(read)

    async def _wait_keeping(self, read: _Read) -> _Outcome:
        """The read's outcome; a read that outlives its trigger (timeout, cancellation) becomes
        the read-ahead for the next trigger, so that no image is skipped."""
        try:
            return await read.outcome()
        except BaseException:
            with self._reads_lock:
                keep = self._started and self._ahead is None
                if keep:
                    self._ahead = read
            if not keep:
                self._drop(read)
            raise

    def _read_ahead(self) -> None:
        """Start reading the next image unless one is read ahead already (or stopped)."""
        with self._reads_lock:
            if self._started and self._ahead is None:
                self._ahead = self._start_read_locked()

    def _start_read(self) -> _Read | None:
        """A read of the next image, started; None when stopped."""
        with self._reads_lock:
            return self._start_read_locked() if self._started else None

    def _start_read_locked(self) -> _Read | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None  # start() outside an event loop: the first trigger reads its image
        read = _Read(self._read_next)
        # The camera's reader thread, not a thread per read: starting a thread waits until it
        # is scheduled, which takes milliseconds on a busy machine.
        loop.run_in_executor(self._reader, read.run)
        self._reads = [other for other in self._reads if not other.future.done()]
        self._reads.append(read)
        return read

    def _drop(self, read: _Read) -> None:
        """Forget a read nobody will use: once it is done, its image is put back in line."""

        def undo(future: Future[_Outcome]) -> None:
            if not future.cancelled() and future.exception() is None:
                self._undo(future.result())

        read.future.add_done_callback(undo)

    def _undo(self, outcome: _Outcome) -> None:
        """Move the cursor back to before that read, if no other read moved it since."""
        with self._order_lock:
            if self._cursor is outcome.after:
                self._cursor = outcome.before

    def _read_next(self) -> _Outcome:
        """Read the next readable image, fitted to the configured size, and move the cursor past
        it; or say why there is none. Runs in a worker thread."""
        with self._order_lock:
            before = self._cursor
            image, after = self._advance(before)
            self._cursor = after
        if not isinstance(image, _NoImage):
            image = fit_size(image, self.width, self.height)
        return _Outcome(image, before, after)

    def _advance(self, cursor: _Cursor) -> tuple[Image | _NoImage, _Cursor]:
        """The next readable image from `cursor` on (the folder read again at the end of a
        pass), and the cursor after it."""
        files, index, passes = cursor.files, cursor.next, cursor.passes
        skipped = 0
        while True:
            if index >= len(files):
                if passes and not self.loop:
                    reason = f"all {len(files)} images were replayed (loop is off)"
                    return _NoImage(reason, finished=True), _Cursor(files, index, passes)
                scanned = self.folder.scan()
                if isinstance(scanned, str):
                    return _NoImage(scanned), _Cursor(files, index, passes)
                files, index, passes = tuple(scanned), 0, passes + 1
            path = files[index]
            index += 1
            image = self.folder.read(path)
            if image is not None:
                return image, _Cursor(files, index, passes)
            skipped += 1
            if skipped >= len(files):
                reason = f"none of the {len(files)} images in {self.folder.path} can be read"
                return _NoImage(reason), _Cursor(files, index, passes)
