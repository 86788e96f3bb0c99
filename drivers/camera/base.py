"""What the camera sources share: link state with its logging (a loss once, the recovery once),
the newest-frame slot, counters, and the grabber thread's life cycle."""

from __future__ import annotations

import logging
import threading
import time

from agent.model import now_ms
from drivers.base import LinkState
from drivers.camera.frames import (
    CameraHealth,
    CameraUnavailable,
    Frame,
    FrameRateMeter,
    FrameSlot,
    Image,
)

__all__ = ["CameraBase", "GrabberCamera"]

log = logging.getLogger("drivers.camera")


class CameraBase:
    """State, counters and frames of one camera; subclasses produce the images.

    A subclass calls `_deliver(image)` for every image and `_mark_lost(reason)` when images stop;
    this class turns those into frames, link-state changes and one log line per change.
    """

    def __init__(self, name: str, where: str, *, reconnect_max: float) -> None:
        self.name = name
        self.reconnect_max = reconnect_max
        self._where = where
        self._lock = threading.Lock()
        self._slot = FrameSlot()
        self._meter = FrameRateMeter()
        self._health = CameraHealth(state=LinkState.CONNECTING, since_ms=now_ms())
        self._running = False
        self._seq = 0
        self._ever_delivered = False
        self._failed_attempts = 0
        self._down_since = 0.0
        self._last_arrival = 0.0

    def describe(self) -> str:
        """Which camera this is, for messages (credentials in URLs are masked)."""
        return f"camera '{self.name}' ({self._where})"

    def latest(self) -> Frame | None:
        """The newest frame, or None before the first."""
        return self._slot.newest

    def health(self) -> CameraHealth:
        """State, since when, frames, reconnects, the latest error and the measured frame rate."""
        self._check_stall()
        with self._lock:
            health = self._health
            return CameraHealth(
                state=health.state,
                since_ms=health.since_ms,
                frames=health.frames,
                reconnects=health.reconnects,
                last_error=health.last_error,
                fps=round(self._meter.rate(), 2),
            )

    def _check_stall(self) -> None:
        """Hook for sources that can stall without noticing it themselves."""

    def _set_running(self, running: bool) -> None:
        with self._lock:
            self._running = running
            if running:
                self._health.state = LinkState.CONNECTING
            elif self._health.state != LinkState.DISCONNECTED:
                self._health.state = LinkState.DISCONNECTED
            self._health.since_ms = now_ms()
            self._failed_attempts = 0
        if not running:
            self._slot.fail_waiters(f"the {self.describe()} was stopped")

    def _deliver(
        self, image: Image, *, captured: float | None = None, captured_ms: int | None = None
    ) -> Frame:
        """Make a frame of `image` and hand it out; `captured` (monotonic) and `captured_ms`
        default to now."""
        arrived = time.monotonic()
        announcement: str | None = None
        with self._lock:
            self._seq += 1
            frame = Frame(
                image=image,
                ts_ms=now_ms() if captured_ms is None else captured_ms,
                monotonic=arrived if captured is None else captured,
                seq=self._seq,
            )
            if not self._running:
                return frame  # a last read that finished after stop(): not handed out
            self._health.frames += 1
            if captured is None:  # frames a stream had buffered would inflate the rate
                self._meter.add(arrived)
            self._last_arrival = arrived
            if self._health.state != LinkState.CONNECTED:
                announcement = self._connected_locked(arrived)
        self._slot.publish(frame)
        if announcement is not None:
            log.info(
                "The %s delivers %dx%d frames%s.",
                self.describe(),
                image.shape[1],
                image.shape[0],
                announcement,
            )
        return frame

    def _connected_locked(self, arrived: float) -> str:
        """Switch to CONNECTED (the lock is held); returns how to finish the log line."""
        previous = self._health.state
        self._health.state = LinkState.CONNECTED
        self._health.since_ms = now_ms()
        failed, self._failed_attempts = self._failed_attempts, 0
        if not self._ever_delivered:
            self._ever_delivered = True
            return f" after {failed} failed attempts" if failed else ""
        if previous == LinkState.DISCONNECTED:
            self._health.reconnects += 1
            return f" again after {arrived - self._down_since:.1f} s without"
        return " again"  # started again after stop()

    def _mark_lost(self, reason: str, *, finished: bool = False, stale_for: float = 0.0) -> None:
        """Record that frames stopped, for `reason`; logs only the change of state.

        With `stale_for`, only if no frame arrived in that many seconds (checked under the lock,
        so a frame that arrives meanwhile wins). `finished`: a replay that ended, not a fault.
        """
        with self._lock:
            if not self._running:
                return  # stopping: the grabber's last read failing is no loss
            if stale_for and (
                self._health.state != LinkState.CONNECTED
                or time.monotonic() - self._last_arrival < stale_for
            ):
                return
            previous = self._health.state
            self._health.last_error = reason
            self._failed_attempts += 1
            if previous != LinkState.DISCONNECTED:
                self._health.state = LinkState.DISCONNECTED
                self._health.since_ms = now_ms()
                self._down_since = time.monotonic()
                self._meter.clear()
        self._slot.fail_waiters(f"the {self.describe()} is unavailable: {reason}")
        if previous == LinkState.DISCONNECTED:
            log.debug("The %s is still unavailable: %s.", self.describe(), reason)
        elif finished:
            log.info("The %s stops: %s.", self.describe(), reason)
        elif previous == LinkState.CONNECTED:
            log.warning("The %s is lost: %s. %s", self.describe(), reason, self._retry_note())
        else:
            log.warning(
                "The %s cannot be opened: %s. %s", self.describe(), reason, self._retry_note()
            )

    def _retry_note(self) -> str:
        return f"Trying again with backoff up to {self.reconnect_max:g} s."

    def _unavailable(self, timeout: float) -> CameraUnavailable:
        with self._lock:
            state, error = self._health.state, self._health.last_error
        if state == LinkState.DISCONNECTED:
            return CameraUnavailable(f"the {self.describe()} is disconnected: {error}")
        detail = f" (still connecting; last error: {error})" if error else ""
        return CameraUnavailable(
            f"the {self.describe()} delivered no frame within {timeout:g} s{detail}"
        )


class GrabberCamera(CameraBase):
    """A camera whose images come from its own grabber thread (`_grab`), which runs until the
    event it is given is set. `frame_after` waits on the newest-frame slot without blocking the
    event loop."""

    # How long stop() waits for the grabber; a read blocked inside OpenCV may take this long.
    join_timeout_s = 2.0

    def __init__(self, name: str, where: str, *, reconnect_max: float) -> None:
        super().__init__(name, where, reconnect_max=reconnect_max)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start the grabber thread; returns at once (opening happens in the thread)."""
        if self._thread is not None:
            return
        self._stopping = threading.Event()
        self._set_running(True)
        self._thread = threading.Thread(
            target=self._grab_guarded,
            args=(self._stopping,),
            name=f"camera-{self.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the grabber thread and wait for it (at most `join_timeout_s`)."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._stopping.set()
        self._set_running(False)
        thread.join(self.join_timeout_s)
        if thread.is_alive():
            log.warning(
                "The grabber of the %s did not stop within %g s (a read is blocked inside "
                "OpenCV); it ends on its own when that read returns.",
                self.describe(),
                self.join_timeout_s,
            )

    @property
    def running(self) -> bool:
        """Whether start() was called and stop() was not."""
        return self._thread is not None

    # `timeout` is part of the contract: each station waits its own frame_timeout per trigger.
    async def frame_after(self, after_monotonic: float, timeout: float) -> Frame:  # noqa: ASYNC109
        """The first frame captured at or after `after_monotonic` (the newest, if it is recent
        enough), waiting up to `timeout` seconds. Raises CameraUnavailable when the camera is
        stopped, lost (at once, not after the timeout) or sends nothing in time."""
        self._check_stall()
        if self._thread is None:
            raise CameraUnavailable(f"the {self.describe()} is not started")
        newest = self._slot.newest
        if newest is not None and newest.monotonic >= after_monotonic:
            return newest
        with self._lock:
            lost = self._health.state == LinkState.DISCONNECTED
        if lost:
            raise self._unavailable(timeout)
        try:
            return await self._slot.wait_after(after_monotonic, timeout)
        except TimeoutError:
            self._check_stall()
            raise self._unavailable(timeout) from None

    def _grab(self, stopping: threading.Event) -> None:
        raise NotImplementedError

    def _grab_guarded(self, stopping: threading.Event) -> None:
        try:
            self._grab(stopping)
        except Exception as exc:  # a bug must not leave a silent, dead camera behind
            log.exception("The grabber of the %s failed.", self.describe())
            self._mark_lost(f"its grabber failed: {exc!r}")
