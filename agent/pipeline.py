"""Device tasks and the outbox writer.

Each device is sampled by its own task at its own interval, so a slow or dead device never
stalls another. Tasks hand batches to the outbox writer through a bounded queue and never wait
on the network; the writer commits batches to SQLite every `commit_interval` or `commit_rows`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent.buffer import LiveBuffer
from agent.model import Event, Quality, Sample, now_ms
from agent.outbox import PendingRow
from agent.publish.payload import utf8_size
from agent.retention import Retention
from agent.settings import AnyDevice, ModbusPoint, OpcUaPoint, OutboxSettings
from agent.transforms import TransformChain
from drivers.base import NotConnected, PolledDriver, backoff_delay

__all__ = ["Batch", "DeviceRunner", "OutboxWriter", "PipelineStats", "encode_rows"]

log = logging.getLogger(__name__)

# Rows the live buffer may hold before the writer stops taking batches (only reached when the
# disk fails): bounds memory; the handoff queue then fills and counts what it drops.
_MAX_LIVE_ROWS = 20_000
# How often the outbox file learns how many records were delivered straight from memory, when
# nothing else needs writing.
_COUNT_DELIVERED_EVERY_S = 60.0
# How often the outbox's bounds (cap, ttl, free-disk reserve) are checked.
_RETENTION_EVERY_S = 2.0


@dataclass(frozen=True, slots=True)
class Batch:
    """Records for one topic: a device's samples from one poll, or events of one kind."""

    kind: Literal["metrics", "events"]
    topic: str
    records: Sequence[Sample] | Sequence[Event]


@dataclass(slots=True)
class PipelineStats:
    """Counters shared by the device tasks and the writer, reported in health."""

    samples_in: int = 0
    records_committed: int = 0
    records_dropped: int = 0
    polls_late: dict[str, int] = field(default_factory=dict)
    drop_episode: bool = False


class Handoff:
    """The bounded queue between the device tasks and the writer; never blocks a device."""

    def __init__(self, maxsize: int, stats: PipelineStats) -> None:
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize)
        self.stats = stats

    def put(self, batch: Batch) -> None:
        """Queue a batch; if the writer is so far behind that the queue is full, count a drop."""
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.stats.records_dropped += len(batch.records)
            if not self.stats.drop_episode:
                self.stats.drop_episode = True
                log.error(
                    "The outbox writer is %d batches behind (is the disk failing?); new samples "
                    "are being dropped and counted until it catches up.",
                    self.queue.maxsize,
                )
            return
        if self.stats.drop_episode and self.queue.qsize() < self.queue.maxsize // 2:
            self.stats.drop_episode = False
            log.warning("The outbox writer caught up; samples are stored again.")


class DeviceRunner:
    """Polls one device at its interval, forever, reconnecting with backoff when it is gone."""

    def __init__(self, device: AnyDevice, driver: PolledDriver, handoff: Handoff) -> None:
        self.device = device
        self.driver = driver
        self.handoff = handoff
        self.transforms = TransformChain(device.points)
        self._points: list[ModbusPoint | OpcUaPoint] = list(device.points)
        self._connected = False
        self._down_since: int | None = None
        self._error = "not connected yet"
        self._attempt = 0
        self._retry_at = 0.0
        self._crashed = False
        # Called with every poll's samples before transforms (which may hold a value back):
        # stations watch their trigger, part id and acknowledge points here.
        self.observers: list[Callable[[Sequence[Sample]], None]] = []
        self._observer_failed = False

    async def run(self) -> None:
        """Sample until cancelled."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        interval = self.device.interval
        next_tick = loop.time()
        try:
            while True:
                try:
                    samples = await self._poll(loop)
                except Exception as exc:  # noqa: BLE001 (a bug must not stop other devices)
                    samples = await self._internal_error(exc)
                if task.cancelling():
                    # Python 3.11's asyncio.wait_for, used inside pymodbus, drops a cancellation
                    # that arrives as a connect or read completes; without this check the
                    # agent would not stop until systemd killed it, without flushing.
                    raise asyncio.CancelledError
                self._emit(samples)
                next_tick += interval
                now = loop.time()
                if next_tick < now:
                    missed = int((now - next_tick) // interval) + 1
                    late = self.handoff.stats.polls_late
                    late[self.device.name] = late.get(self.device.name, 0) + missed
                    next_tick += missed * interval
                await asyncio.sleep(next_tick - now)
        finally:
            await self.driver.close()

    async def _poll(self, loop: asyncio.AbstractEventLoop) -> Sequence[Sample]:
        if not self._connected and loop.time() >= self._retry_at:
            try:
                await self.driver.connect()
            except NotConnected as exc:
                self._attempt += 1
                self._retry_at = loop.time() + backoff_delay(
                    self._attempt, self.device.reconnect_max
                )
                self._went_down(str(exc))
            else:
                self._attempt = 0
                self._came_up()
        if not self._connected:
            return self._bad_samples()
        try:
            return await self.driver.read(self._points)
        except NotConnected as exc:
            self._retry_at = loop.time() + backoff_delay(0, self.device.reconnect_max)
            self._went_down(str(exc))
            return self._bad_samples()

    async def _internal_error(self, exc: Exception) -> list[Sample]:
        """An error the driver did not expect: log its traceback once per run, start over."""
        if not self._crashed:
            self._crashed = True
            log.error(
                "Device %s failed with an unexpected error; its points are reported BAD and the "
                "connection is opened again. Please report this with the traceback below.",
                self.device.name,
                exc_info=exc,
            )
        with contextlib.suppress(Exception):
            await self.driver.close()
        self._retry_at = asyncio.get_running_loop().time() + backoff_delay(
            self._attempt, self.device.reconnect_max
        )
        self._went_down(f"internal error: {exc!r}")
        return self._bad_samples()

    def _emit(self, samples: Sequence[Sample]) -> None:
        self.handoff.stats.samples_in += len(samples)
        for observer in self.observers:
            try:
                observer(samples)
            except Exception:  # a station's bug must not stop the device's data
                if not self._observer_failed:
                    self._observer_failed = True
                    log.exception(
                        "A station or energy consumer watching device %s failed on its samples; "
                        "the device's data keeps flowing. Please report this with the traceback "
                        "below.",
                        self.device.name,
                    )
        kept = self.transforms.apply(samples)
        if kept:
            self.handoff.put(Batch("metrics", self.device.name, kept))

    def _bad_samples(self) -> list[Sample]:
        ts = now_ms()
        return [Sample(point.id, None, Quality.BAD, ts, self._error) for point in self._points]

    def _went_down(self, error: str) -> None:
        self._error = error
        if self._connected or self._down_since is None:
            self._connected = False
            self._down_since = now_ms()
            log.warning(
                "Device %s (%s) is unreachable: %s. Its points are reported BAD and the agent "
                "keeps retrying with backoff.",
                self.device.name,
                self.driver.endpoint,
                error,
            )
            self._event("disconnected", error)

    def _came_up(self) -> None:
        self._connected = True
        if self._down_since is not None:
            outage = (now_ms() - self._down_since) / 1000
            log.info(
                "Device %s (%s) is reachable again after %.1f s.",
                self.device.name,
                self.driver.endpoint,
                outage,
            )
        else:
            log.info("Connected to device %s (%s).", self.device.name, self.driver.endpoint)
        self._down_since = None
        self._event("connected", None)

    def _event(self, state: str, error: str | None) -> None:
        data: dict[str, object] = {"state": state}
        if error:
            data["error"] = error
        message = f"Device {self.device.name} is {state}" + (f": {error}" if error else ".")
        self.handoff.put(
            Batch("events", "link", [Event("link", self.device.name, message, data=data)])
        )


class OutboxWriter:
    """Moves queued batches into the live buffer, and commits to the outbox file what the
    broker has not acknowledged within half a `commit_interval` (so nothing waits in memory
    longer than one `commit_interval`)."""

    def __init__(
        self,
        buffer: LiveBuffer,
        handoff: Handoff,
        settings: OutboxSettings,
        *,
        on_new: Callable[[], None],
        max_body: int,
        retention: Retention | None = None,
    ) -> None:
        self.buffer = buffer
        self.handoff = handoff
        self.settings = settings
        self.on_new = on_new
        self.max_body = max_body
        self.retention = retention
        self._failing = False
        self._bounds_failing = False

    async def run(self) -> None:
        """Take batches and commit until cancelled (then `flush()` commits what is left)."""
        queue = self.handoff.queue
        grace = self.settings.commit_interval / 2
        next_commit = time.monotonic() + grace
        next_count = time.monotonic() + _COUNT_DELIVERED_EVERY_S
        next_retention = time.monotonic()  # first at startup: a long stop may have expired rows
        while True:
            if self.retention is not None and time.monotonic() >= next_retention:
                events = await asyncio.shield(asyncio.to_thread(self._enforce_bounds))
                if events:
                    self.handoff.put(Batch("events", "outbox_overflow", events))
                next_retention = time.monotonic() + _RETENTION_EVERY_S
            timeout = next_commit - time.monotonic()
            if timeout > 0 and len(self.buffer) < _MAX_LIVE_ROWS:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                # cancellation that stops the agent when the queue yields at the same moment.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        batches = [await queue.get()]
                    while not queue.empty() and len(batches) < 1000:
                        batches.append(queue.get_nowait())
                    self._take(batches)
            elif timeout > 0:
                await asyncio.sleep(timeout)  # the disk is failing: let the handoff queue fill
            # Only records the publisher had a grace period to take count: a big batch that
            # just arrived is not a broker that stopped taking them.
            unsent = self.buffer.unsent_records(added_before=time.monotonic() - grace)
            if time.monotonic() >= next_commit or unsent >= self.settings.commit_rows:
                older_than = time.monotonic() - grace
                if unsent >= self.settings.commit_rows:
                    older_than = float("inf")  # the broker is not taking them: write them now
                count = time.monotonic() >= next_count
                if count:
                    next_count = time.monotonic() + _COUNT_DELIVERED_EVERY_S
                # Shielded: cancelling the await cannot stop the thread, and `flush()` then
                # waits for this commit to finish before committing the rest.
                await asyncio.shield(asyncio.to_thread(self._commit, older_than, count))
                next_commit = time.monotonic() + grace

    def flush(self) -> None:
        """Take everything still queued and commit everything unacknowledged (at shutdown)."""
        batches = []
        while not self.handoff.queue.empty():
            batches.append(self.handoff.queue.get_nowait())
        self._take(batches)
        self._commit(float("inf"), count_delivered=True)

    def _take(self, batches: list[Batch]) -> None:
        rows = [row for batch in batches for row in encode_rows(batch, self.max_body)]
        if rows:
            self.buffer.add(rows)
            self.on_new()

    def _enforce_bounds(self) -> list[Event]:
        """In a worker thread: the events about what was dropped (put on the handoff by the
        caller, on the event loop's thread)."""
        assert self.retention is not None
        try:
            events = self.retention.check()
        except Exception as exc:  # noqa: BLE001 (bounds checks must never stop the data path)
            if not self._bounds_failing:
                self._bounds_failing = True
                log.error(
                    "Cannot check the outbox's bounds (%s); it may grow beyond them until this "
                    "works again. Trying again every %.0f s.",
                    exc,
                    _RETENTION_EVERY_S,
                )
            return []
        if self._bounds_failing:
            self._bounds_failing = False
            log.warning("The outbox's bounds are checked again.")
        return list(events)

    def _commit(self, older_than: float, count_delivered: bool = False) -> None:
        try:
            written = self.buffer.commit(older_than, count_delivered=count_delivered)
        except (sqlite3.Error, OSError) as exc:
            if not self._failing:
                self._failing = True
                log.error(
                    "Cannot write to the outbox (%s); records stay in memory (up to %d batches, "
                    "then new samples are dropped and counted) until the disk works again.",
                    exc,
                    _MAX_LIVE_ROWS,
                )
            return
        if self._failing:
            self._failing = False
            log.warning("The outbox is writable again.")
        self.handoff.stats.records_committed += written


def encode_rows(batch: Batch, max_body: int) -> list[PendingRow]:
    """The batch as outbox rows whose JSON bodies each fit in one message of `max_body` bytes.

    A single record larger than that still makes a row of its own.
    """
    records = batch.records
    body = "[" + ",".join([record.to_json() for record in records]) + "]"
    if utf8_size(body) <= max_body or len(records) == 1:
        return [PendingRow(batch.kind, batch.topic, len(records), records[0].ts, body)]
    half = len(batch.records) // 2
    return [
        *encode_rows(Batch(batch.kind, batch.topic, batch.records[:half]), max_body),
        *encode_rows(Batch(batch.kind, batch.topic, batch.records[half:]), max_body),
    ]
