"""Keeps the outbox within its bounds: a byte cap (of used pages), a time to live, and a reserve
of free disk.

When a bound is reached the oldest metrics are dropped first; events (link changes, overflows,
inspection results) only when no metric is left to drop. Nothing is dropped silently: every
drop is counted by class in the outbox file (so the count survives restarts), the first drop of
an episode is logged as an ERROR and its end with the totals, and each check that dropped
something hands back an `outbox_overflow` event saying what was lost, from when to when.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.model import Event, now_ms
from agent.outbox import Dropped, Outbox
from agent.settings import OutboxSettings

__all__ = ["Retention", "RetentionReport"]

log = logging.getLogger(__name__)

# Dropping goes below the cap by this share, so that one check frees room for a while
# instead of a few rows at every check.
_HEADROOM = 0.05


@dataclass(slots=True)
class RetentionReport:
    """What the last checks found, for health."""

    used_bytes: int = 0
    cap_bytes: int = 0
    free_disk_bytes: int | None = None
    dropping: bool = False
    episodes: int = 0
    dropped: dict[str, int] = field(
        default_factory=lambda: {"metrics": 0, "events": 0, "dead_letters": 0}
    )


class Retention:
    """Checks and enforces the bounds; `check()` runs in a worker thread, never concurrently."""

    def __init__(
        self, outbox: Outbox, settings: OutboxSettings, keep: Callable[[], set[int]]
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.keep = keep  # ids of rows being sent right now: never dropped
        self.report = RetentionReport(cap_bytes=settings.max_bytes)
        self.report.dropped = outbox.dropped_records()
        self._episode: list[Dropped] = []

    def check(self) -> list[Event]:
        """Enforce the bounds once; returns the events to publish about what was dropped."""
        drops: list[tuple[Dropped, str]] = []
        ttl_reason = f"older than the outbox ttl of {_days(self.settings.ttl)}"
        for drop in self.outbox.drop_expired(now_ms() - int(self.settings.ttl * 1000), self.keep):
            drops.append((drop, ttl_reason))
        used = self.outbox.used_bytes()
        free = _free_disk(self.outbox)
        cap = self.settings.max_bytes
        cap_reason = f"beyond the outbox cap of {_mib(cap)}"
        if free is not None:
            # Used pages may fill the file and then the disk down to the reserve. Measured
            # against the file's size, which deleting rows does not change (freed pages are
            # reused), so a disk short of its reserve does not make every check drop more.
            room = self.outbox.file_bytes() + free - self.settings.min_free_disk
            if room < cap:
                cap = max(room, 0)
                cap_reason = (
                    f"to keep the free-disk reserve of {_mib(self.settings.min_free_disk)} "
                    f"({_mib(free)} free)"
                )
        self.report.used_bytes, self.report.free_disk_bytes = used, free
        if used > cap:
            target = int(cap * (1 - _HEADROOM))
            # Metrics first, then dead letters (already given up on), events last.
            for kind in ("metrics", "dead_letters", "events"):
                dropped = self.outbox.drop_oldest(kind, target, self.keep)
                if dropped is not None:
                    drops.append((dropped, cap_reason))
            self.report.used_bytes = self.outbox.used_bytes()
        return self._account(drops)

    def _account(self, drops: list[tuple[Dropped, str]]) -> list[Event]:
        for drop, _ in drops:
            self.report.dropped[drop.kind] = self.report.dropped.get(drop.kind, 0) + drop.records
        if not drops:
            if self._episode:
                self._end_episode()
            return []
        if not self._episode:
            self.report.episodes += 1
            self.report.dropping = True
            log.error(
                "Dropping the oldest unsent records, %s: the broker has not taken them in time. "
                "Counts are in health; the episode's totals follow when it ends.",
                drops[0][1],
            )
        self._episode += [drop for drop, _ in drops]
        return [_overflow_event(drop, reason) for drop, reason in drops]

    def _end_episode(self) -> None:
        episode, self._episode = self._episode, []
        self.report.dropping = False
        by_kind: dict[str, int] = {}
        for drop in episode:
            by_kind[drop.kind] = by_kind.get(drop.kind, 0) + drop.records
        first = min(drop.first_ts for drop in episode)
        last = max(drop.last_ts for drop in episode)
        log.warning(
            "The outbox is within its bounds again. This episode dropped %s, sampled from %s to "
            "%s.",
            " and ".join(f"{count} {kind} records" for kind, count in sorted(by_kind.items())),
            _time(first),
            _time(last),
        )


def _overflow_event(drop: Dropped, because: str) -> Event:
    return Event(
        "outbox_overflow",
        "outbox",
        f"Dropped {drop.records} unsent {drop.kind} records ({drop.rows} batches), {because}; "
        f"sampled from {_time(drop.first_ts)} to {_time(drop.last_ts)}.",
        data={
            "class": drop.kind,
            "records": drop.records,
            "batches": drop.rows,
            "from_ts": drop.first_ts,
            "to_ts": drop.last_ts,
            "reason": because,
        },
    )


def _free_disk(outbox: Outbox) -> int | None:
    try:
        stats = os.statvfs(outbox.path.parent)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _mib(size: int) -> str:
    if size < 2**20:
        return f"{size / 2**10:.0f} KiB"
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} d" if seconds >= 86400 else f"{seconds / 3600:g} h"


def _time(ts_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
