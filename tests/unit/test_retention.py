"""The outbox's bounds: the oldest metrics go first, events last, rows being sent never; every
dropped record is counted, reported as an event with its time range, logged once per episode."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import agent.retention
from agent.model import now_ms
from agent.outbox import Outbox, PendingRow
from agent.retention import Retention
from agent.settings import OutboxSettings

CAP = 256 * 1024


def rows(kind: str, count: int, *, first_ts: int, samples: int = 10) -> list[PendingRow]:
    body = json.dumps([{"p": f"p{i}", "v": i * 1.5, "q": "good"} for i in range(samples)])
    return [
        PendingRow(kind, "press3", samples, first_ts + i, body)  # type: ignore[arg-type]
        for i in range(count)
    ]


def remaining(outbox: Outbox) -> dict[str, list[int]]:
    """first_ts of every row left, by kind."""
    left: dict[str, list[int]] = {"metrics": [], "events": []}
    for row in outbox.lease(0, 1_000_000):
        left[row.kind].append(row.first_ts)
    return left


def settings(**extra: Any) -> OutboxSettings:
    return OutboxSettings.model_validate({"max_bytes": CAP, **extra})


def test_the_oldest_metrics_go_first_and_every_record_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    outbox = Outbox(tmp_path / "outbox.db")
    now = now_ms()
    outbox.append(rows("events", 20, first_ts=now - 10_000))  # older than every metric
    outbox.append(rows("metrics", 2000, first_ts=now))
    assert outbox.used_bytes() > CAP
    retention = Retention(outbox, settings(), keep=set)
    with caplog.at_level(logging.WARNING):
        events = retention.check()
    assert outbox.used_bytes() <= CAP
    left = remaining(outbox)
    assert len(left["events"]) == 20, "events are kept longest"
    dropped_rows = 2000 - len(left["metrics"])
    assert left["metrics"] == [now + i for i in range(dropped_rows, 2000)], "the newest are kept"
    counted = {"metrics": dropped_rows * 10, "events": 0, "dead_letters": 0}
    assert outbox.dropped_records() == counted
    assert retention.report.dropped == counted
    [event] = events
    assert event.kind == "outbox_overflow"
    assert event.data["records"] == dropped_rows * 10 and event.data["class"] == "metrics"
    assert (event.data["from_ts"], event.data["to_ts"]) == (now, now + dropped_rows - 1)
    assert "beyond the outbox cap of 256 KiB" in event.message
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Dropping the oldest unsent records" in errors[0].getMessage()

    # Still over the cap later: the same episode, logged once.
    outbox.append(rows("metrics", 500, first_ts=now + 10_000))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert retention.check()
        assert retention.check() == []  # within bounds: the episode ends, with its totals
    messages = [r.getMessage() for r in caplog.records]
    assert not any("Dropping" in m for m in messages)
    assert any("within its bounds again" in m and "metrics records" in m for m in messages)
    assert retention.report.episodes == 1 and not retention.report.dropping


def test_events_go_only_when_no_metric_is_left(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append(rows("events", 3000, first_ts=now_ms()))
    outbox.append(rows("metrics", 10, first_ts=now_ms()))
    events = Retention(outbox, settings(), keep=set).check()
    left = remaining(outbox)
    assert left["metrics"] == [] and 0 < len(left["events"]) < 3000
    assert [e.data["class"] for e in events] == ["metrics", "events"]
    assert outbox.dropped_records()["metrics"] == 100


def test_rows_being_sent_are_never_dropped(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    ids = outbox.append(rows("metrics", 2000, first_ts=now_ms()))
    in_flight = set(ids[:5])
    Retention(outbox, settings(), keep=lambda: in_flight).check()
    left_ids = {row.id for row in outbox.lease(0, 1_000_000)}
    assert in_flight <= left_ids
    assert ids[5] not in left_ids


def test_rows_older_than_the_ttl_are_dropped(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    now = now_ms()
    outbox.append(rows("metrics", 3, first_ts=now - 3 * 3600_000))
    outbox.append(rows("events", 2, first_ts=now - 3 * 3600_000))
    outbox.append(rows("metrics", 4, first_ts=now))
    events = Retention(outbox, settings(ttl="2h"), keep=set).check()
    assert remaining(outbox) == {"metrics": [now, now + 1, now + 2, now + 3], "events": []}
    assert outbox.dropped_records() == {"metrics": 30, "events": 20, "dead_letters": 0}
    assert {e.data["class"]: e.data["records"] for e in events} == {"metrics": 30, "events": 20}
    assert all("older than the outbox ttl of 2 h" in e.message for e in events)


def test_the_free_disk_reserve_stops_the_file_growing_and_holds_still(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append(rows("metrics", 1000, first_ts=now_ms()))
    used = outbox.used_bytes()
    # 100 KiB short of a 1 MiB reserve: the outbox must give that back, cap or not.
    monkeypatch.setattr(agent.retention, "_free_disk", lambda _outbox: 2**20 - 100 * 1024)
    retention = Retention(outbox, settings(max_bytes="1GiB", min_free_disk="1MiB"), keep=set)
    events = retention.check()
    assert outbox.used_bytes() <= used - 100 * 1024
    assert "free-disk reserve of 1.0 MiB" in events[0].message
    # Deleting rows frees pages inside the file, not disk: the next checks must not take
    # that for a disk still short and drop everything.
    left = len(outbox.lease(0, 10_000))
    assert retention.check() == [] and retention.check() == []
    assert len(outbox.lease(0, 10_000)) == left > 0


def test_rows_in_flight_are_skipped_and_newer_metrics_go_instead_of_events(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    ids = outbox.append(rows("metrics", 6000, first_ts=now_ms(), samples=2))
    outbox.append(rows("events", 20, first_ts=now_ms()))
    assert outbox.used_bytes() > CAP
    in_flight = set(ids[:600])  # more than one page of candidates
    Retention(outbox, settings(), keep=lambda: in_flight).check()
    assert outbox.used_bytes() <= CAP
    assert outbox.dropped_records()["events"] == 0
    assert in_flight <= {row.id for row in outbox.lease(0, 100_000)}


def test_the_last_lease_is_not_dropped(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append(rows("metrics", 2000, first_ts=now_ms()))
    leased = {row.id for row in outbox.lease(0, 40)}  # the publisher is about to send these
    Retention(outbox, settings(), keep=set).check()
    assert leased <= {row.id for row in outbox.lease(0, 100_000)}


def test_dead_letters_go_after_metrics_and_before_events(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    dead = outbox.append(rows("metrics", 2000, first_ts=now_ms()))
    outbox.bury(dead, "not authorized", now_ms())
    outbox.append(rows("metrics", 100, first_ts=now_ms()))
    outbox.append(rows("events", 50, first_ts=now_ms()))
    events = Retention(outbox, settings(), keep=set).check()
    dropped = outbox.dropped_records()
    assert dropped["metrics"] == 1000 and dropped["dead_letters"] > 0 and dropped["events"] == 0
    assert [e.data["class"] for e in events] == ["metrics", "dead_letters"]
    assert outbox.used_bytes() <= CAP


def test_counts_survive_a_restart(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append(rows("metrics", 2000, first_ts=now_ms()))
    Retention(outbox, settings(), keep=set).check()
    dropped = outbox.dropped_records()
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    assert Retention(reopened, settings(), keep=set).report.dropped == dropped
