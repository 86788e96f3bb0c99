"""The outbox keeps rows across restarts, leases oldest first and forgets only what it is told."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import sqlite_utils

from agent.outbox import Outbox, PendingRow, StoredRow
from agent.publish.payload import message_payload


def row(topic: str, *values: float, kind: str = "metrics") -> PendingRow:
    body = json.dumps(
        [{"p": "x", "v": v, "q": "good", "ts": 1000 + i} for i, v in enumerate(values)]
    )
    return PendingRow(kind, topic, len(values), 1000, body)  # type: ignore[arg-type]


def test_append_lease_delete_and_restart(tmp_path: Path):
    path = tmp_path / "data" / "outbox.db"
    outbox = Outbox(path)
    assert outbox.next_session() == 1
    ids = outbox.append([row("plc", 1.0, 2.0), row("plc", 3.0), row("link", kind="events")])
    leased = outbox.lease(0, 10)
    assert ids == [r.id for r in leased]
    assert [r.n for r in leased] == [2, 1, 0]
    assert [r.id for r in leased] == sorted(r.id for r in leased)
    assert outbox.lease(leased[0].id, 1)[0].id == leased[1].id
    outbox.delete([leased[0].id])
    outbox.close()

    reopened = Outbox(path)
    assert reopened.next_session() == 2
    stats = reopened.stats()
    assert (stats.rows, stats.records, stats.accepted_records) == (2, 1, 3)
    reopened.append([], delivered_records=5)  # acknowledged before they needed committing
    assert reopened.stats().accepted_records == 8
    assert [r.id for r in reopened.lease(0, 10)] == [leased[1].id, leased[2].id]
    reopened.close()


def test_ids_are_never_reused_after_the_newest_row_is_deleted(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append([row("plc", 1.0)])
    first = outbox.lease(0, 1)[0].id
    outbox.delete([first])
    outbox.append([row("plc", 2.0)])
    assert outbox.lease(0, 1)[0].id > first
    outbox.close()


def test_file_is_wal_and_readable_with_sqlite_utils(tmp_path: Path):
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, synchronous="full")
    outbox.append([row("plc", 1.5)])
    db = sqlite_utils.Database(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"outbox", "meta"} <= set(db.table_names())
    rows = list(db["outbox"].rows)
    assert json.loads(rows[0]["body"])[0]["v"] == 1.5
    outbox.close()


def test_failed_commit_leaves_nothing_half_written(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    bad = PendingRow("metrics", "plc", 1, 1000, None)  # type: ignore[arg-type]
    try:
        outbox.append([row("plc", 1.0), bad])
    except sqlite3.IntegrityError:
        pass
    else:
        raise AssertionError("a NULL body must be refused")
    stats = outbox.stats()
    assert (stats.rows, stats.accepted_records) == (0, 0)
    outbox.close()


def test_message_payload_joins_rows_without_reencoding():
    rows = [
        StoredRow(1, "metrics", "plc", 1, 1000, '[{"p":"a","v":1,"q":"good","ts":1000}]'),
        StoredRow(2, "metrics", "plc", 0, 1000, "[]"),
        StoredRow(3, "metrics", "plc", 1, 1001, '[{"p":"a","v":2.5,"q":"good","ts":1001}]'),
    ]
    payload = json.loads(message_payload("gw-1", 7, 42, "metrics", rows))
    assert payload == {
        "agent": "gw-1",
        "session": 7,
        "seq": 42,
        "samples": [
            {"p": "a", "v": 1, "q": "good", "ts": 1000},
            {"p": "a", "v": 2.5, "q": "good", "ts": 1001},
        ],
    }
    events = json.loads(message_payload("gw-1", 7, 43, "events", rows[1:2]))
    assert events["events"] == []
