"""Device tasks and the outbox writer.

Each device is sampled by its own task at its own interval, so a slow or dead device never
stalls another. Tasks hand batches to the outbox writer through a bounded queue and never wait
on the network; the writer commits batches to SQLite every `commit_interval` or `commit_rows`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent.model import Event, Quality, Sample, now_ms
from agent.outbox import Outbox, PendingRow
from agent.settings import ModbusTcpDevice, OutboxSettings
from agent.transforms import TransformChain
from drivers.base import NotConnected
from drivers.modbus.client import ModbusTcpDriver

__all__ = ["Batch", "DeviceRunner", "OutboxWriter", "PipelineStats", "backoff_delay", "encode_rows"]

log = logging.getLogger(__name__)

_BACKOFF_BASE_S = 0.25


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


def backoff_delay(attempt: int, cap: float, base: float = _BACKOFF_BASE_S) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))  # noqa: S311


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

    def __init__(self, device: ModbusTcpDevice, driver: ModbusTcpDriver, handoff: Handoff) -> None:
        self.device = device
        self.driver = driver
        self.handoff = handoff
        self.transforms = TransformChain(device.points)
        self._points = list(device.points)
        self._connected = False
        self._down_since: int | None = None
        self._error = "not connected yet"

    async def run(self) -> None:
        """Sample until cancelled."""
        loop = asyncio.get_running_loop()
        interval = self.device.interval
        attempt = 0
        retry_at = 0.0
        next_tick = loop.time()
        try:
            while True:
                if not self._connected and loop.time() >= retry_at:
                    try:
                        await self.driver.connect()
                    except NotConnected as exc:
                        attempt += 1
                        retry_at = loop.time() + backoff_delay(attempt, self.device.reconnect_max)
                        self._went_down(str(exc))
                    else:
                        attempt = 0
                        self._came_up()
                if self._connected:
                    try:
                        samples = await self.driver.read(self._points)
                    except NotConnected as exc:
                        retry_at = loop.time() + backoff_delay(0, self.device.reconnect_max)
                        self._went_down(str(exc))
                        samples = self._bad_samples()
                else:
                    samples = self._bad_samples()
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

    def _emit(self, samples: list[Sample]) -> None:
        self.handoff.stats.samples_in += len(samples)
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
    """Commits queued batches to the outbox in transactions of many rows."""

    def __init__(
        self,
        outbox: Outbox,
        handoff: Handoff,
        settings: OutboxSettings,
        on_commit: Callable[[], None],
        max_body: int,
    ) -> None:
        self.outbox = outbox
        self.max_body = max_body
        self.handoff = handoff
        self.settings = settings
        self.on_commit = on_commit

    async def run(self) -> None:
        """Commit batches until cancelled (then `flush()` commits what is left)."""
        loop = asyncio.get_running_loop()
        queue = self.handoff.queue
        while True:
            pending = [await queue.get()]
            records = len(pending[0].records)
            deadline = loop.time() + self.settings.commit_interval
            while records < self.settings.commit_rows:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                pending.append(batch)
                records += len(batch.records)
            await asyncio.to_thread(self._commit, pending)

    def flush(self) -> None:
        """Commit everything still queued (at shutdown)."""
        pending = []
        while not self.handoff.queue.empty():
            pending.append(self.handoff.queue.get_nowait())
        self._commit(pending)

    def _commit(self, batches: list[Batch]) -> None:
        if not batches:
            return
        rows = [row for batch in batches for row in encode_rows(batch, self.max_body)]
        try:
            self.outbox.append(rows)
        except (sqlite3.Error, OSError) as exc:
            lost = sum(row.n for row in rows)
            self.handoff.stats.records_dropped += lost
            log.error("Could not commit %d records to the outbox, they are lost: %s", lost, exc)
            return
        self.handoff.stats.records_committed += sum(row.n for row in rows)
        self.on_commit()


def encode_rows(batch: Batch, max_body: int) -> list[PendingRow]:
    """The batch as outbox rows whose JSON bodies each fit in one message of `max_body` bytes.

    A single record larger than that still makes a row of its own.
    """
    wire = [record.to_wire() for record in batch.records]
    body = json.dumps(wire, separators=(",", ":"), ensure_ascii=False)
    if len(body) <= max_body or len(wire) == 1:
        return [PendingRow(batch.kind, batch.topic, len(wire), batch.records[0].ts, body)]
    half = len(batch.records) // 2
    return [
        *encode_rows(Batch(batch.kind, batch.topic, batch.records[:half]), max_body),
        *encode_rows(Batch(batch.kind, batch.topic, batch.records[half:]), max_body),
    ]
