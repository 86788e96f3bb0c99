"""The live buffer: acknowledged records never touch the disk, unacknowledged ones always do."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

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

    def append(self, rows: Sequence[PendingRow], *, delivered_records: int = 0) -> list[int]:
        ids = super().append(rows, delivered_records=delivered_records)
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


def test_rejected_entries_are_offered_again(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    buffer = LiveBuffer(outbox)
    buffer.add([row(1.0)])
    sent = buffer.take_pending()
    buffer.rejected(sent)
    assert buffer.unsent_records() == 1
    assert buffer.take_pending() == sent
