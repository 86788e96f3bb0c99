"""The live buffer: acknowledged records never touch the disk, unacknowledged ones always do."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from agent.buffer import LiveBuffer
from agent.outbox import Outbox, PendingRow


def row(value: float) -> PendingRow:
    body = json.dumps([{"p": "x", "v": value, "q": "good", "ts": 1}])
    return PendingRow("metrics", "plc", 1, 1, body)


def test_acknowledged_before_the_grace_period_is_never_written(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0), row(2.0)])
    sent = buffer.take_pending()
    assert [entry.state for entry in sent] == ["published", "published"]
    assert buffer.take_pending() == []
    buffer.acknowledged(sent)
    assert len(buffer) == 0
    assert buffer.commit(older_than=float("inf")) == 0
    assert outbox.stats().accepted_records == 0, "no write at all while the broker keeps up"
    assert buffer.commit_all() == 0
    stats = outbox.stats()
    assert (stats.rows, stats.accepted_records) == (0, 2), "the delivered count, at shutdown"


def test_unpublished_entries_become_backlog_rows(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0)])
    assert buffer.commit(older_than=0) == 0, "younger than the grace period: stays in memory"
    assert buffer.commit_all() == 1
    assert len(buffer) == 0
    [stored] = outbox.lease(0, 10)
    assert not buffer.is_live(stored.id)


def test_published_then_committed_is_deleted_by_its_ack(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0)])
    sent = buffer.take_pending()
    assert buffer.commit_all() == 1
    [stored] = outbox.lease(0, 10)
    assert buffer.is_live(stored.id), "the backlog must not send it a second time"
    buffer.acknowledged(sent)
    assert outbox.lease(0, 10) == []
    assert not buffer.is_live(stored.id)


class AckDuringCommit(Outbox):
    """An outbox whose commit lets the broker's acknowledgement arrive half-way."""

    on_append: Callable[[], None] = staticmethod(lambda: None)

    def append(
        self,
        rows: Sequence[PendingRow],
        *,
        delivered_records: int = 0,
        before_commit: Callable[[Sequence[int]], None] | None = None,
    ) -> list[int]:
        ids = super().append(rows, delivered_records=delivered_records, before_commit=before_commit)
        self.on_append()
        return ids


def test_ack_arriving_during_the_commit_deletes_the_row(tmp_path: Path):
    outbox = AckDuringCommit(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0)])
    sent = buffer.take_pending()
    outbox.on_append = lambda: buffer.acknowledged(sent)
    buffer.commit_all()
    assert outbox.lease(0, 10) == []
    assert len(buffer) == 0


def test_a_row_acknowledged_during_the_commit_stays_hidden_until_deleted(tmp_path: Path):
    """Between the commit and the delete of such a row, the publisher's backlog scan must
    not see it, or the broker gets it twice."""

    hidden_while_deleting: list[bool] = []

    class WatchingDelete(AckDuringCommit):
        def delete(self, ids: Sequence[int]) -> None:
            hidden_while_deleting.extend(buffer.is_live(i) for i in ids)
            super().delete(ids)

    outbox = WatchingDelete(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0), row(2.0)])
    sent = buffer.take_pending()
    outbox.on_append = lambda: buffer.acknowledged(sent[:1])
    buffer.commit_all()
    assert hidden_while_deleting == [True]
    stored = outbox.lease(0, 10)
    assert len(stored) == 1 and buffer.is_live(stored[0].id), "the other is still sent live"
    buffer.acknowledged(sent[1:])
    assert not buffer.is_live(stored[0].id) and outbox.lease(0, 10) == []


def test_only_records_older_than_the_grace_period_count_as_unsent(tmp_path: Path):
    buffer = LiveBuffer(Outbox(tmp_path / "outbox.db"))
    buffer.add([row(1.0)])
    assert buffer.unsent_records() == 1
    assert buffer.unsent_records(added_before=time.monotonic() - 0.5) == 0


def test_rejected_entries_are_offered_again(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0)])
    sent = buffer.take_pending()
    buffer.rejected(sent)
    assert buffer.unsent_records() == 1
    assert buffer.take_pending() == sent


def test_a_rejected_committed_entry_is_handed_to_the_backlog(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0), row(2.0)])
    sent = buffer.take_pending()
    buffer.commit_all()
    stored = outbox.lease(0, 10)
    assert all(buffer.is_live(r.id) for r in stored)
    assert buffer.rejected(sent) == [r.id for r in stored], "the publisher leases these again"
    assert not any(buffer.is_live(r.id) for r in stored)
    assert len(buffer) == 0


def test_new_rows_are_hidden_from_the_backlog_until_the_buffer_has_sorted_them(tmp_path: Path):
    # Between the outbox COMMIT and the buffer marking a row live, the publisher must not
    # lease it: one of these rows is being sent from memory at that moment.
    outbox = AckDuringCommit(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0), row(2.0)])
    [first, _] = buffer.take_pending()
    buffer.rejected([first])
    buffer.take_pending()  # both published again
    buffer.add([row(3.0)])  # still pending
    seen: list[bool] = []
    outbox.on_append = lambda: seen.extend(buffer.is_live(r.id) for r in outbox.lease(0, 10))
    buffer.commit_all()
    assert seen == [True, True, True]
    [_, _, pending] = outbox.lease(0, 10)
    assert not buffer.is_live(pending.id), "after sorting, the unpublished row is backlog"


def test_overlapping_commits_write_each_entry_once(tmp_path: Path):
    # At shutdown the writer's commit thread may still run while flush() commits the rest.
    outbox = AckDuringCommit(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0), row(2.0)])
    inside, release = threading.Event(), threading.Event()

    def block_first_commit() -> None:
        outbox.on_append = lambda: None
        inside.set()
        assert release.wait(5)

    outbox.on_append = block_first_commit
    first = threading.Thread(target=buffer.commit_all)
    first.start()
    assert inside.wait(5)
    second = threading.Thread(target=buffer.commit_all)
    second.start()
    release.set()
    first.join(5)
    second.join(5)
    assert outbox.stats().records == 2
    assert len(buffer) == 0


class FailingCommit(Outbox):
    """An outbox whose commit fails, after the broker acknowledged what was being committed."""

    on_append: Callable[[], None] = staticmethod(lambda: None)

    def append(
        self,
        rows: Sequence[PendingRow],
        *,
        delivered_records: int = 0,
        before_commit: Callable[[Sequence[int]], None] | None = None,
    ) -> list[int]:
        if rows:
            self.on_append()
            raise sqlite3.OperationalError("disk I/O error")
        return super().append(rows, delivered_records=delivered_records)


def test_an_entry_acknowledged_during_a_failed_commit_is_counted_once(tmp_path: Path):
    outbox = FailingCommit(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0), row(2.0)])
    sent = buffer.take_pending()
    outbox.on_append = lambda: buffer.acknowledged(sent[:1])
    with pytest.raises(sqlite3.OperationalError):
        buffer.commit_all()
    assert len(buffer) == 1, "the acknowledged entry is gone, the other one waits"
    buffer.acknowledged(sent[1:])
    assert len(buffer) == 0
    buffer.commit_all()
    assert outbox.stats().accepted_records == 2
